"""Retry without paying twice: ``POST /api/v1/jobs/{job_id}/retry`` of a failed or cancelled job.

A retry is a **new job** (``retry_of`` names the job it continues; that job's ``retried_by`` names
it back). A frontend already knows how to follow a job from its creation: the retry answers the
upload's 201 shape with the new ``job_id``, which is watched (SSE), cancelled and downloaded like
any other, while the original keeps its status, its event log, its stages and its costs exactly
as they were (its history stays readable, and its stream never reopens after its final event).

What the new job reuses (:func:`plan`): every stage the original got past — completed, or failed
and continued past (``reference_generator`` in text-only mode) — in pipeline order, up to the
first one that did not finish; the new job starts there (``resumed_from``). The reused stages'
rows are copied into the new job (``metadata.reused_from``, no duration: they are not measured
again) and are never dispatched, so no worker runs them and no cost of theirs is recorded for the
new job: their cost stays charged once, to the original. The new job's ``total_cost`` counts what
it spends itself, against a cap of its own (``COST_LIMIT``).

Files: stage outputs name storage keys under the original's prefixes, and a job's files are
deleted by prefix (intermediates when it completes or is cancelled, everything when its files
expire). So the new job never points into another job's prefixes: the song and the original's
intermediate files are **copied** under the new job's own prefixes and the reused outputs are
rewritten to name the copies (:func:`rebase_output`). Every job then owns exactly the files it
references; cleanup needs no knowledge of retries and can never delete a file a live attempt
needs. A reused stage whose files are gone (a cancel deletes intermediates at once, as the spec
says; an expiry may be under way) is not reused: the retry starts at the first such stage
instead. Without the song (expired) there is nothing to retry: 410.

The new job is created as an upload creates one (``admission``): ``queued`` and waiting for its
turn among its user's jobs, with ``current_stage`` the stage it resumes at; when its turn comes
that stage is dispatched, its input built from the copied outputs.

A job is retried at most once (``retried_by``, set under the original's row lock), so a double
click creates one job; a retry's own failure is retried by retrying the retry. Only ``failed``
jobs (cancelled ones included) are retried; any other state answers 400 like the owner's cancel of
a final job (:class:`~montage_orchestrator.errors.JobNotRetryable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import structlog
from montage_common.storage import layout
from montage_contracts import api
from montage_contracts.api import MessageData, ProgressData, timestamp
from montage_contracts.errors import Forbidden, Gone, NotFound
from montage_contracts.pipeline import PIPELINE, STAGES, JobStatus, StageStatus, spec

from montage_orchestrator import admission, costs, metrics, store
from montage_orchestrator.deps import Deps
from montage_orchestrator.errors import JobNotRetryable
from montage_orchestrator.jobs import estimated_remaining
from montage_orchestrator.transitions import Effects, after_commit, begin

log = structlog.get_logger()

REUSED_FROM = "reused_from"  # job_stages.metadata of a reused stage: the job it was copied from
COPY_CONCURRENCY = 8


# --- decisions (pure) ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StageRow:
    status: str
    output: str | None  # JSON text


def plan(rows: Mapping[str, StageRow]) -> tuple[str, ...]:
    """The stages a retry reuses, in pipeline order: each the original completed (with an output),
    or failed and continued past (a recovering policy, and the next stage was started)."""
    reused: list[str] = []
    for i, stage in enumerate(PIPELINE):
        row = rows.get(stage.name)
        if row is None:
            break
        if row.status == StageStatus.COMPLETED and row.output is not None:
            reused.append(stage.name)
            continue
        following = PIPELINE[i + 1].name if i + 1 < len(PIPELINE) else None
        if row.status == StageStatus.FAILED and stage.on_failure != "fail" and following in rows:
            reused.append(stage.name)
            continue
        break
    return tuple(reused)


def refusal(status: str, retried_by: str | None) -> str | None:
    """Why a job in this state cannot be retried (None: it can)."""
    if retried_by is not None:
        return f"Job was already retried as {retried_by}; retry that job instead"
    if status != JobStatus.FAILED:
        return f"Job is {status}; only a failed or cancelled job can be retried"
    return None


def rebase_output(raw: str, rebase: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """``raw`` (a stage's output, JSON) with every string ``rebase`` maps replaced by its image;
    and the strings it replaced (the original's storage keys the output names)."""
    named: list[str] = []

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            new = rebase(value)
            if new is None:
                return value
            named.append(value)
            return new
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return json.dumps(walk(json.loads(raw)), separators=(",", ":")), named


# --- the retry -----------------------------------------------------------------------------
@dataclass
class _Copies:
    """Files copied for the new job (deleted again if the retry does not commit)."""

    done: dict[str, str] = field(default_factory=dict)  # original key -> copy

    @property
    def keys(self) -> list[str]:
        return list(self.done.values())


def _content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


async def _copy_files(deps: Deps, job: asyncpg.Record, new_id: str, copies: _Copies) -> None:
    """Copy the song and every intermediate file of ``job`` under ``new_id``'s prefixes; a file that
    is gone is simply not copied (the stages naming it are then run again)."""
    old_id, user = str(job["job_id"]), job["user_id"]
    keys = [job["audio_key"]]
    for prefix in layout.intermediate_prefixes(old_id):
        keys.extend(o.key for o in await deps.storage.list(prefix))
    gate = asyncio.Semaphore(COPY_CONCURRENCY)

    async def one(key: str) -> None:
        dest = layout.rebase_key(key, old_id, user, new_id)
        if dest is None:
            return
        async with gate:
            try:
                await deps.storage.copy(key, dest, _content_type(key))
            except NotFound:
                return
        copies.done[key] = dest

    await asyncio.gather(*(one(k) for k in keys))


def _owned(job: asyncpg.Record | None, user: str) -> asyncpg.Record:
    if job is None:
        raise NotFound("Job not found")
    if job["user_id"] != user:
        raise Forbidden("Job belongs to another user", job_id=str(job["job_id"]))
    return job


async def retry_job(deps: Deps, job_id: uuid.UUID, user: str) -> api.JobRetried:
    """Create the retry of ``job_id`` (see the module docstring); returns the 201 body."""
    new_id = uuid.uuid4()
    copies = _Copies()
    eff = Effects(job_id=str(new_id))
    old_eff = Effects(job_id=str(job_id))
    try:
        async with deps.pool.acquire() as conn, conn.transaction():
            old = _owned(await store.lock_job(conn, job_id), user)
            retried_by = None if old["retried_by"] is None else str(old["retried_by"])
            if (why := refusal(old["status"], retried_by)) is not None:
                extra = {"retried_by": retried_by} if retried_by else None
                raise JobNotRetryable(why, job_id=str(job_id), extra=extra)
            if old["files_cleaned_at"] is not None:
                raise Gone("This job's files have expired; upload the song again", job_id=str(job_id))
            await _copy_files(deps, old, str(new_id), copies)
            if old["audio_key"] not in copies.done:
                raise Gone("This job's song is no longer stored; upload it again", job_id=str(job_id))
            rows = await conn.fetch(
                "SELECT stage_name, status, output::text AS output, metadata::text AS metadata"
                " FROM job_stages WHERE job_id = $1",
                job_id,
            )
            outputs = _reusable_outputs(
                {r["stage_name"]: StageRow(r["status"], r["output"]) for r in rows}, old, str(new_id), copies
            )
            reused = list(outputs)
            resume = STAGES[len(reused)] if len(reused) < len(STAGES) else STAGES[-1]
            reused = reused[: STAGES.index(resume)]
            row = await _insert_job(conn, deps, old, new_id, copies.done[old["audio_key"]], resume, reused)
            meta = {r["stage_name"]: r["metadata"] for r in rows}
            for name in reused:
                await _insert_reused_stage(conn, new_id, name, outputs[name], meta[name], str(job_id))
            await begin(deps, old_eff)
            old_eff.row = await conn.fetchrow(
                "UPDATE jobs SET retried_by = $2, updated_at = now() WHERE job_id = $1 RETURNING *", job_id, new_id
            )
            _announce(deps, eff, str(job_id), reused, resume, row)
            outbox_id = await deps.outbox.add(conn, new_id, eff.emits)
    except BaseException:
        if copies.done:  # nothing of a retry that did not happen stays behind
            with contextlib.suppress(Exception):
                await asyncio.shield(deps.storage.delete(copies.keys))
        raise
    await after_commit(deps, old_eff)
    await deps.outbox.send_quietly(outbox_id)
    await admission.start_turns_quietly(deps)  # its turn now if its user has a free slot
    metrics.JOBS_CREATED.inc()
    log.info("job_retried", job_id=str(new_id), retry_of=str(job_id), resumed_from=resume, reused=reused)
    return api.JobRetried(
        job_id=str(new_id),
        status=JobStatus.QUEUED,  # as inserted
        estimated_cost=float(row["estimated_cost"]),
        created_at=timestamp(row["created_at"]),
        retry_of=str(job_id),
        resumed_from=resume,
        reused_stages=reused,
    )


def _reusable_outputs(
    rows: Mapping[str, StageRow], old: asyncpg.Record, new_id: str, copies: _Copies
) -> dict[str, str | None]:
    """The rewritten outputs of the stages :func:`plan` reuses, up to the first whose files were not
    all copied (that stage runs again, and so does every later one)."""
    old_id, user = str(old["job_id"]), old["user_id"]
    out: dict[str, str | None] = {}
    for name in plan(rows):
        raw = rows[name].output
        if raw is None:  # continued past without an output (text-only)
            out[name] = None
            continue
        rewritten, named = rebase_output(raw, lambda key: layout.rebase_key(key, old_id, user, new_id))
        if any(key not in copies.done for key in named):
            log.info("retry_stage_files_missing", job_id=old_id, stage=name)
            break
        out[name] = rewritten
    return out


async def _insert_job(  # noqa: PLR0917
    conn: asyncpg.Connection,
    deps: Deps,
    old: asyncpg.Record,
    new_id: uuid.UUID,
    audio_key: str,
    resume: str,
    reused: list[str],
) -> asyncpg.Record:
    s = deps.settings
    now = await conn.fetchval("SELECT now()")
    return await store.insert_job(
        conn,
        store.traced(
            {
                "job_id": new_id,
                "user_id": old["user_id"],
                "status": JobStatus.QUEUED,
                "current_stage": resume,
                "progress": spec(reused[-1]).progress if reused else 0,
                "user_prompt": old["user_prompt"],
                "audio_key": audio_key,
                "audio_filename": old["audio_filename"],
                "audio_duration": old["audio_duration"],
                "environment": s.environment,
                "estimated_cost": costs.estimate_job(s, old["audio_duration"]),
                "cost_limit": s.cost_limit,
                "created_at": now,
                "updated_at": now,
                "retry_of": old["job_id"],
                "webhook_url": old["webhook_url"],  # the retry's final event goes where the original's went
            }
        ),
    )


async def _insert_reused_stage(  # noqa: PLR0917
    conn: asyncpg.Connection, job_id: uuid.UUID, stage: str, output: str | None, metadata: str, source: str
) -> None:
    """The original's stage row, as the new job's: finished, never dispatched (dispatch 0), no duration."""
    meta = json.loads(metadata or "{}")
    meta[REUSED_FROM] = source
    await conn.execute(
        "INSERT INTO job_stages (job_id, stage_name, status, dispatch, started_at, completed_at, metadata, output)"
        " SELECT $1, $2, s.status, 0, now(), now(), $4::jsonb, $3::jsonb FROM job_stages s"
        " WHERE s.job_id = $5 AND s.stage_name = $2",
        job_id,
        stage,
        output,
        json.dumps(meta),
        uuid.UUID(source),
    )


def _announce(  # noqa: PLR0917
    deps: Deps, eff: Effects, old_id: str, reused: list[str], resume: str, row: asyncpg.Record
) -> None:
    """The new job's first events: what it reuses, and the progress that stands for it."""
    if reused:
        text = f"Retrying job {old_id}: reusing {', '.join(reused)}; starting at {resume}"
    else:
        text = f"Retrying job {old_id} from the start"
    eff.event(deps, MessageData(text=text, stage=resume))
    remaining = estimated_remaining(JobStatus.PROCESSING, resume, row["audio_duration"], finished=False)
    eff.event(deps, ProgressData(progress=row["progress"], estimated_remaining=remaining))
    eff.total = Decimal(0)
