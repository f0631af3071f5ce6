"""The orchestrator's internal HTTP API: a handler per route of ``montage_contracts.routes`` it serves
(the gateway forwards them here with the internal secret)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from montage_common import db, tracing
from montage_common.idempotency import FINGERPRINT_HEADER
from montage_common.redis import REDIS_DOWN
from montage_common.storage import layout
from montage_common.web import Handler, internal_user, query_int
from montage_contracts import api
from montage_contracts.api import timestamp
from montage_contracts.errors import BudgetExceededError, ErrorCode, Gone, NotFound, ValidationError
from montage_contracts.pipeline import JOB_STATUSES, STAGES, JobStatus

from montage_orchestrator import (
    admin,
    admission,
    assets,
    costs,
    deletion,
    metrics,
    retry,
    store,
    upload,
    usage,
    webhooks,
)
from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.health import health_report
from montage_orchestrator.http import job_uuid, owned, respond
from montage_orchestrator.jobs import RATES, list_item, money, snapshot, status_body
from montage_orchestrator.transitions import CANCELLED_MESSAGE, cancel

log = structlog.get_logger()


def _user(request: web.Request) -> tuple[Deps, str]:
    deps = request.app[DEPS]
    return deps, internal_user(request, deps.settings.internal_secret)


@admission.door  # 503 (busy) + Retry-After, before the body is read, when the wait is too long
async def upload_audio(request: web.Request) -> web.Response:
    deps, user = _user(request)
    s = deps.settings
    try:
        received = await upload.receive(request, s.max_upload_bytes)
    except ValidationError as err:
        metrics.UPLOAD_REJECTED.labels(err.code).inc()
        raise
    try:
        prompt = upload.check_prompt(received.prompt, s.prompt_min_chars, s.prompt_max_chars)
        webhook_url = await webhooks.check_upload_url(deps, received.webhook_url)  # SSRF rules: 400
        if webhook_url is None:  # the user's default, if any (checked when set, and at every delivery)
            webhook_url = await webhooks.default_url(deps.pool, user)
        audio = await upload.probe(received.path)
        if audio.duration > s.max_audio_seconds:
            raise ValidationError(f"Audio is {audio.duration:.0f} s long; the limit is {s.max_audio_seconds:.0f} s")
        estimate = costs.estimate_job(s, audio.duration)
        limit = s.cost_limit
        if estimate > limit:
            raise BudgetExceededError(f"Estimated cost ${estimate} exceeds the ${limit} limit per job")
        job_id = uuid.uuid4()
        tracing.current().set_attribute("montage.job_id", str(job_id))
        filename = upload.safe_filename(received.filename, audio.kind)
        audio_key = layout.audio_upload(user, str(job_id), filename)
        await deps.storage.put_file(audio_key, received.path, audio.content_type)
    except ValidationError as err:
        metrics.UPLOAD_REJECTED.labels(err.code).inc()
        raise
    except BudgetExceededError:
        metrics.UPLOAD_REJECTED.labels(ErrorCode.BUDGET_EXCEEDED).inc()
        raise
    finally:
        received.discard()
    try:
        row, started = await _create_job(
            deps, job_id, user, prompt, audio_key, filename, audio.duration, estimate, webhook_url=webhook_url
        )
    except BaseException:
        # No job row: the stored song must not stay behind (nothing is left by a failed upload).
        with contextlib.suppress(Exception):
            await asyncio.shield(deps.storage.delete([audio_key]))
        raise
    await admission.turns_given(deps, started)
    request[admission.AUDIO_SECONDS] = audio.duration  # the door prices it by its song until a reading holds it
    metrics.JOBS_CREATED.inc()
    log.info("job_created", job_id=str(job_id), duration=round(audio.duration, 2), estimate=str(estimate))
    body = api.JobCreated(
        job_id=str(job_id),
        status=JobStatus.QUEUED,  # as inserted
        estimated_cost=money(estimate),
        created_at=timestamp(row["created_at"]),
    )
    resp = respond(body, status=201)
    resp.headers[FINGERPRINT_HEADER] = received.fingerprint  # for Idempotency-Key (the gateway keeps it)
    return resp


async def _create_job(  # noqa: PLR0917
    deps: Deps,
    job_id: uuid.UUID,
    user: str,
    prompt: str,
    audio_key: str,
    filename: str,
    duration: float,
    estimate: Any,
    *,
    webhook_url: str | None = None,
) -> tuple[asyncpg.Record, admission.Started]:
    """Insert the job waiting for its turn (``queued``, no deadline, no task: see ``admission``),
    and in the same transaction give the turns now due: its own when its user has a free slot."""
    s = deps.settings
    async with deps.pool.acquire() as conn, conn.transaction():
        now = await conn.fetchval("SELECT now()")
        row = await store.insert_job(
            conn,
            store.traced(
                {
                    "job_id": job_id,
                    "user_id": user,
                    "status": JobStatus.QUEUED,
                    "current_stage": STAGES[0],
                    "user_prompt": prompt,
                    "audio_key": audio_key,
                    "audio_filename": filename,
                    "audio_duration": duration,
                    "environment": s.environment,
                    "estimated_cost": estimate,
                    "cost_limit": s.cost_limit,
                    "created_at": now,
                    "updated_at": now,
                    "webhook_url": webhook_url,
                }
            ),
        )
        deps.user_events.remember(str(job_id), user)  # the first copy of its events needs no lookup
        return row, await admission.give_turns_quietly(conn, deps)


async def _snapshot(deps: Deps, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The job's status: from the cache, else Postgres (also while Redis is down)."""
    cache_up = True
    try:
        cached = await deps.cache.get(str(job_id))
    except REDIS_DOWN as exc:
        log.warning("status_cache_unavailable", job_id=str(job_id), error=type(exc).__name__)
        cached, cache_up = None, False
    if cached is not None:
        return cached
    row = await store.get_job(deps.pool, job_id)
    if row is None:
        return None
    snap = snapshot(row)
    if cache_up:
        with contextlib.suppress(*REDIS_DOWN):
            await deps.cache.fill(str(job_id), snap)
    return snap


async def get_job(request: web.Request) -> web.Response:
    deps, user = _user(request)
    job_id = job_uuid(request)
    snap = await _snapshot(deps, job_id)
    owned(snap, user)
    assert snap is not None
    url = None
    poster = None
    if snap["status"] == JobStatus.COMPLETED and snap["video_key"] and not snap["files_cleaned_at"]:
        url = await deps.storage.signed_url(snap["video_key"], deps.settings.download_url_seconds)
        poster = await assets.poster_url(deps, snap["job_id"])
    with contextlib.suppress(asyncpg.PostgresError, *db.TRANSIENT):
        await RATES.refresh(deps.pool)  # at most once a minute; the spec's priors meanwhile
    body = status_body(snap, url)
    body.poster_url = poster
    await admission.places(deps, [body])  # queue_position, estimated_start
    return respond(body)


async def list_jobs(request: web.Request) -> web.Response:
    deps, user = _user(request)
    status = request.query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(JOB_STATUSES)}")
    limit = query_int(request, "limit", 10, 1, 50)
    offset = query_int(request, "offset", 0, 0, 1_000_000)
    rows, total = await store.list_jobs(deps.pool, user, status, limit, offset)
    items = [list_item(r) for r in rows]
    await admission.places(deps, items)
    return respond(api.JobList(jobs=items, total=total, limit=limit, offset=offset))


async def cancel_job(request: web.Request) -> web.Response:
    deps, user = _user(request)
    job_id = job_uuid(request)
    row = await cancel(deps, job_id, CANCELLED_MESSAGE, check=lambda row: owned(row, user))
    log.info("job_cancelled", job_id=str(job_id), was=row["status"])
    return respond(api.Cancelled(job_id=str(job_id), status=JobStatus.FAILED, message=CANCELLED_MESSAGE))


async def delete_job(request: web.Request) -> web.Response:
    """Delete the caller's job: cancel it if running, its files, rows and event log (``deletion``); 204,
    also when it was deleted before; 404 for a job that is not the caller's."""
    deps, user = _user(request)
    await deletion.delete_job(deps, job_uuid(request), owner=user, deleted_by="user")
    return web.Response(status=204)


@admission.door  # a retry adds work like an upload: the same 503 + Retry-After when the wait is too long
async def retry_job(request: web.Request) -> web.Response:
    """A new job continuing a failed or cancelled one from the stage it did not finish (``retry``)."""
    deps, user = _user(request)
    return respond(await retry.retry_job(deps, job_uuid(request), user), status=201)


async def download(request: web.Request) -> web.Response:
    deps, user = _user(request)
    job_id = job_uuid(request)
    row = await store.get_job(deps.pool, job_id)
    owned(row, user)
    assert row is not None
    if row["status"] != JobStatus.COMPLETED or not row["video_key"]:
        raise NotFound("Job not completed", job_id=str(job_id))
    if row["files_cleaned_at"] is not None or not await deps.storage.exists(row["video_key"]):
        raise Gone("Video expired or deleted", job_id=str(job_id))
    expires = deps.settings.download_url_seconds
    url = await deps.storage.signed_url(row["video_key"], expires)
    return respond(api.Download(download_url=url, expires_in=expires, filename=f"music_video_{job_id}.mp4"))


async def internal_health(request: web.Request) -> web.Response:
    """The gateway's ``/api/v1/health`` asks this (the internal credential is checked by the app)."""
    deps = request.app[DEPS]
    report = await health_report(deps)
    return respond(report, status=200 if not report.issues else 503)


def handlers() -> dict[str, Handler]:
    """The handler of each of the orchestrator's routes in ``montage_contracts.routes``, by operation id."""
    return {
        "uploadAudio": upload_audio,
        "listJobs": list_jobs,
        "getJob": get_job,
        "cancelJob": cancel_job,
        "deleteJob": delete_job,
        "getWebhookDefault": webhooks.get_default,
        "setWebhookDefault": webhooks.set_default,
        "deleteWebhookDefault": webhooks.delete_default,
        "retryJob": retry_job,
        "getDownload": download,
        "getJobAssets": assets.list_assets,
        "getInternalHealth": internal_health,
        "getInternalUsage": usage.internal_usage,
        **admin.handlers(),  # /api/v1/admin/*: the operator console (admins only; see admin.py)
    }
