"""Jobs in the console: search any user's jobs, one job's whole story, and cancel.

The cancel is the owner's (:func:`montage_orchestrator.transitions.cancel`): the same transaction,
the same answers (404 for no such job, 400 ``VALIDATION_ERROR`` for a finished one), with the
operator's message and the action logged in that transaction, done or refused.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import structlog
from aiohttp import web
from montage_common.storage import layout
from montage_common.web import REQUEST_ID, query_int, query_text
from montage_contracts import api
from montage_contracts.api import timestamp, timestamp_ms
from montage_contracts.errors import MontageError, NotFound, ValidationError
from montage_contracts.events import decode_event
from montage_contracts.pipeline import FINAL_STATUSES, JOB_STATUSES, STAGES, JobStatus, StageStatus

from montage_orchestrator import deletion, store, webhooks
from montage_orchestrator.admin.access import admin
from montage_orchestrator.admin.actions import action_row, record_action
from montage_orchestrator.admin.dead_letters import job_dead_letters
from montage_orchestrator.http import job_uuid, respond
from montage_orchestrator.jobs import money
from montage_orchestrator.transitions import OPERATOR_CANCEL_MESSAGE, cancel

log = structlog.get_logger()


def _job(row: asyncpg.Record) -> dict[str, Any]:
    """The fields of :class:`api.AdminJobFull` from a job row (the list shows a subset of them)."""
    return {
        "job_id": str(row["job_id"]),
        "user_id": row["user_id"],
        "status": JobStatus(row["status"]),
        "current_stage": row["current_stage"],
        "progress": row["progress"],
        "total_cost": money(row["total_cost"]),
        "estimated_cost": money(row["estimated_cost"]),
        "video_key": row["video_key"],
        "error_message": row["error_message"],
        "error_code": row["error_code"],
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
        "completed_at": store.iso(row["completed_at"]),
        "files_expire_at": store.iso(row["files_expire_at"]),
        "files_cleaned_at": store.iso(row["files_cleaned_at"]),
        "user_prompt": row["user_prompt"],
        "audio_filename": row["audio_filename"],
        "audio_duration": row["audio_duration"],
        "cost_limit": money(row["cost_limit"]),
        "started_at": store.iso(row["started_at"]),
        "deadline_at": store.iso(row["deadline_at"]),
    }


def _job_summary(row: asyncpg.Record) -> api.AdminJob:
    fields = _job(row)
    return api.AdminJob(**{name: fields[name] for name in api.AdminJob.__struct_fields__})


async def search_jobs(request: web.Request) -> web.Response:
    """Newest first; ``q`` is a job id or a user id (exact), ``status`` filters."""
    deps, _ = admin(request)
    limit = query_int(request, "limit", 20, 1, 100)
    offset = query_int(request, "offset", 0, 0, 1_000_000)
    q = query_text(request, "q", 200)
    status = request.query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(JOB_STATUSES)}")
    where, args = [], []
    if q:
        job_id = store.as_uuid(q)
        args.append(job_id if job_id is not None else q)
        where.append("job_id = $1" if job_id is not None else "user_id = $1")
    if status:
        args.append(status)
        where.append(f"status = ${len(args)}")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = await deps.pool.fetchval(f"SELECT count(*) FROM jobs {clause}", *args)
    rows = await deps.pool.fetch(
        f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, job_id LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args,
        limit,
        offset,
    )
    return respond(api.AdminJobs(jobs=[_job_summary(r) for r in rows], total=total, limit=limit, offset=offset))


async def _events(deps: Any, job_id: str, limit: int = 1000) -> list[api.AdminEvent]:
    """The job's logged events, each decoded as its typed payload (entries that are not are skipped)."""
    r: Any = deps.redis
    rows = await r.xrange(deps.keys.job_events_stream(job_id), count=limit)
    out = []
    for raw_id, fields in rows:
        eid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        try:
            ev = decode_event(fields[b"m"])
        except (msgspec.DecodeError, KeyError):
            continue
        at = timestamp_ms(int(eid.split("-")[0]))
        out.append(api.AdminEvent(id=eid, at=at, event=ev.event, data=msgspec.to_builtins(ev.data)))
    return out


def _stage(name: str, s: asyncpg.Record | None) -> api.AdminStage:
    if s is None:
        return api.AdminStage(
            stage=name,
            status=StageStatus.PENDING,
            dispatch=0,
            attempts=0,
            started_at=None,
            completed_at=None,
            duration_seconds=None,
            error=None,
            metadata={},
        )
    meta = s["metadata"]
    return api.AdminStage(
        stage=name,
        status=StageStatus(s["status"]),
        dispatch=s["dispatch"],
        attempts=s["attempts"],
        started_at=store.iso(s["started_at"]),
        completed_at=store.iso(s["completed_at"]),
        duration_seconds=s["duration_seconds"],
        error=s["error"],
        metadata=msgspec.json.decode(meta) if isinstance(meta, str | bytes) else (meta or {}),
    )


async def job_detail(request: web.Request) -> web.Response:
    deps, _ = admin(request)
    job_id = job_uuid(request)
    row = await store.get_job(deps.pool, job_id)
    if row is None:
        raise NotFound("Job not found", job_id=str(job_id))
    stage_rows = {
        r["stage_name"]: r for r in await deps.pool.fetch("SELECT * FROM job_stages WHERE job_id = $1", job_id)
    }
    stages = [_stage(name, stage_rows.get(name)) for name in STAGES]
    costs = await deps.pool.fetch(
        "SELECT stage_name, api_name, call_id, cost, created_at FROM job_costs WHERE job_id = $1 ORDER BY id", job_id
    )
    files: list[api.AdminFile] = []
    for prefix in layout.job_prefixes(str(job_id), row["user_id"]):
        try:
            listed = await deps.storage.list(prefix)
        except Exception as exc:  # a storage outage must not hide the rest of the page
            log.warning("admin_file_list_failed", prefix=prefix, error=str(exc)[:200])
            continue
        files.extend(
            api.AdminFile(key=o.key, size=o.size, modified_at=timestamp_ms(int(o.modified_at * 1000)))
            for o in listed[:500]
        )
    actions_rows = await deps.pool.fetch(
        "SELECT * FROM admin_actions WHERE job_id = $1 ORDER BY id DESC LIMIT 50", job_id
    )
    errors = [api.AdminJobError(where=s.stage, code=None, message=s.error) for s in stages if s.error]
    if row["error_message"]:
        errors.insert(0, api.AdminJobError(where="job", code=row["error_code"], message=row["error_message"]))
    body = api.AdminJobDetail(
        job=api.AdminJobFull(**_job(row)),
        stages=stages,
        events=await _events(deps, str(job_id)),
        costs=[
            api.AdminCost(
                stage=c["stage_name"],
                api_name=c["api_name"],
                call_id=c["call_id"],
                cost=money(c["cost"]),
                created_at=timestamp(c["created_at"]),
            )
            for c in costs
        ],
        errors=errors,
        dead_letters=await job_dead_letters(deps, str(job_id)),
        files=files,
        actions=[action_row(a) for a in actions_rows],
        cancellable=row["status"] not in FINAL_STATUSES,
        webhooks=await webhooks.deliveries(deps.pool, job_id),
    )
    return respond(body)


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel any user's queued or running job: the owner's cancel, with the operator's message,
    its action logged in the same transaction whether done or refused."""
    deps, actor = admin(request)
    job_id = job_uuid(request)
    target = f"job/{job_id}"

    def exists(row: asyncpg.Record | None) -> None:
        if row is None:
            raise NotFound("Job not found", job_id=str(job_id))

    async def audit(conn: asyncpg.Connection, row: asyncpg.Record | None, refusal: MontageError | None) -> None:
        if row is None:
            await record_action(conn, actor, "job.cancel", target, None, "not_found", {}, request[REQUEST_ID])
        elif refusal is not None:
            detail = {"status": row["status"]}
            await record_action(conn, actor, "job.cancel", target, job_id, "conflict", detail, request[REQUEST_ID])
        else:
            detail = {"was": row["status"], "stage": row["current_stage"]}
            await record_action(conn, actor, "job.cancel", target, job_id, "done", detail, request[REQUEST_ID])

    await cancel(deps, job_id, OPERATOR_CANCEL_MESSAGE, check=exists, audit=audit)
    log.info("admin_job_cancelled", job_id=str(job_id), actor=actor)
    return respond(api.Cancelled(job_id=str(job_id), status=JobStatus.FAILED, message=OPERATOR_CANCEL_MESSAGE))


async def delete_job(request: web.Request) -> web.Response:
    """Delete any user's job as its owner's delete does (``deletion``), logged in the action log."""
    deps, actor = admin(request)
    job_id = job_uuid(request)
    target = f"job/{job_id}"
    try:
        done = await deletion.delete_job(deps, job_id, owner=None, deleted_by=f"operator:{actor}")
    except NotFound:
        await record_action(deps.pool, actor, "job.delete", target, job_id, "not_found", {}, request[REQUEST_ID])
        raise
    detail = {"user_id": done.user_id, "was": done.was, "files": done.files, "already": done.already}
    await record_action(deps.pool, actor, "job.delete", target, job_id, "done", detail, request[REQUEST_ID])
    log.info("admin_job_deleted", job_id=str(job_id), actor=actor, already=done.already)
    return respond(
        api.AdminJobDeleted(
            job_id=str(job_id), outcome="already_deleted" if done.already else "deleted", files_deleted=done.files
        )
    )
