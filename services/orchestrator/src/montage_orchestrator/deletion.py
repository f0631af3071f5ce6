"""Deleting a job: ``DELETE /api/v1/jobs/{job_id}`` (the owner) and the console's delete (an operator).

What a delete does, in order (each step safe to repeat, so a delete that fails half way is
finished by asking again):

1. **A running or queued job is cancelled first**, by the one cancel transaction
   (:func:`montage_orchestrator.transitions.cancel`): its queued stage tasks are purged from the
   streams, the cancel flag stops workers before their next step.
2. **Its stored files are deleted**: every prefix of the job (:func:`layout.job_prefixes`: the
   song, reference stills, clips and their work files, the video, anything else stored under the
   job's prefixes). A storage error answers 503 (retryable) before any row is touched.
3. **Its rows go, in one transaction**: the job (and by cascade its stages, costs and webhook
   deliveries), its outbox entries, handled-result records and cleanup log (whose keys name the
   user and the song's file name); other jobs' ``retry_of``/``retried_by`` links to it are cleared.
   Kept for accounting (``deleted_jobs``, ``deleted_job_costs``; migration
   ``0710_job_deletion.sql``): each provider charge's amount, provider, stage and time, and the
   job id, its owner's user id and when it was created and deleted: the money was spent and
   billing must add up (the month's spend of ``GET /api/v1/usage`` still counts it). Nothing
   the user wrote or uploaded is kept (no prompt, file name, outputs, error texts, events).
   ``admin_actions`` keeps its rows (the operators' audit log: who did what, not the user's data).
4. **Its Redis keys go**: the event log (SSE replay), the status cache, clip records, budget
   ledger, liveness and fault keys, the SSE connection leases; and its events' copies in its
   owner's event log (``GET /api/v1/events``) with the job's cursor there. The cancel flag of a job that was
   running stays until it expires (``CANCEL_FLAG_SECONDS``): a worker still on the job must see
   it. Before step 2 the delete of a running job waits (at most ``SETTLE_SECONDS``) until no
   worker reports the job alive (``keys.stage_alive``), so a stage that was writing has stopped;
   files a worker still writes after step 2 are deleted by a second pass after the commit, and
   anything later by the scheduled cleanup's orphan rule (no job row).

Afterwards the job is 404 everywhere (status, list, stream, download, retry, cancel) and its
signed URLs fail (the files are gone). Idempotent: a repeated delete by the owner answers 204
again (``deleted_jobs``); anyone else gets 404, as for a job that never existed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from montage_common.storage import layout
from montage_contracts.errors import NotFound, ServiceUnavailable
from montage_contracts.pipeline import FINAL_STATUSES, STAGES

from montage_orchestrator import metrics, store
from montage_orchestrator.deps import Deps
from montage_orchestrator.errors import JobNotCancellable
from montage_orchestrator.transitions import cancel

log = structlog.get_logger()

DELETED_MESSAGE = "Job deleted by its owner"
SETTLE_SECONDS = 20.0  # how long the delete of a running job waits for its workers to stop
OPERATOR_DELETED_MESSAGE = "Job deleted by an operator"


@dataclass(frozen=True, slots=True)
class Deleted:
    job_id: str
    user_id: str
    already: bool  # it was deleted before this call (a repeat)
    was: str | None = None  # its status before the delete
    files: int = 0


async def _settle(deps: Deps, job_id: str) -> bool:
    """Wait until no worker reports the cancelled job alive (each stage's key; they live in the
    job's partition); False when ``SETTLE_SECONDS`` passed first. Redis unreachable: go on."""
    names = [deps.keys.stage_alive(job_id, stage) for stage in STAGES]
    deadline = time.monotonic() + SETTLE_SECONDS
    for _ in range(int(SETTLE_SECONDS / 0.2) + 1):  # bounded
        try:
            alive = await deps.redis.exists(*names)
        except Exception as exc:
            log.warning("job_delete_settle_unknown", job_id=job_id, error=str(exc)[:200])
            return True
        if not alive:
            return True
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    log.warning("job_delete_workers_still_alive", job_id=job_id, seconds=SETTLE_SECONDS)
    return False


async def _tombstone(pool: asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow("SELECT * FROM deleted_jobs WHERE job_id = $1", job_id)
    return row


async def delete_files(deps: Deps, job_id: str, user_id: str) -> int:
    """Delete every stored object of the job; how many. 503 (retryable) when storage fails."""
    keys: list[str] = []
    try:
        for prefix in layout.job_prefixes(job_id, user_id):
            keys.extend(o.key for o in await deps.storage.list(prefix))
        if keys:
            await deps.storage.delete(keys)
    except Exception as exc:
        log.warning("job_delete_files_failed", job_id=job_id, error=str(exc)[:200])
        raise ServiceUnavailable("Storage is unavailable; the job was not deleted, try again", job_id=job_id) from None
    return len(keys)


def _redis_keys(deps: Deps, job_id: str, *, with_cancel_flag: bool) -> list[str]:
    k = deps.keys
    names = [
        k.job_status_cache(job_id),
        k.job_events_stream(job_id),
        k.clip_records(job_id),
        k.clip_dispatched(job_id),
        k.job_budget(job_id),
        k.sse_job_connections(job_id),
        *(k.stage_alive(job_id, s) for s in STAGES),
        *(k.stage_fault(job_id, s) for s in STAGES),
    ]
    if with_cancel_flag:
        names.append(k.job_cancel(job_id))
    return names


async def delete_redis_keys(deps: Deps, job_id: str, *, with_cancel_flag: bool) -> None:
    """Delete the job's keys one by one (they live in different slots on a cluster). Best effort:
    a Redis outage is logged; the event log and caches also expire or are trimmed."""
    for name in _redis_keys(deps, job_id, with_cancel_flag=with_cancel_flag):
        try:
            await deps.redis.delete(name)
        except Exception as exc:
            log.warning("job_delete_redis_failed", job_id=job_id, key=name, error=str(exc)[:200])
            return


async def delete_user_log_entries(deps: Deps, user_id: str, job_id: str) -> int:
    """Remove the job's copies from its owner's event log (``GET /api/v1/events``; the log is the
    user's, so it stays with the user's other jobs) and the job's cursor there; how many. Best effort."""
    log_key, cursors = deps.keys.user_events_stream(user_id), deps.keys.user_event_cursors(user_id)
    r: Any = deps.redis
    removed, start = 0, "-"
    try:
        while True:
            batch = await r.xrange(log_key, min=start, max="+", count=1000)
            ours = [eid for eid, fields in batch if fields.get(b"j", b"").decode() == job_id]
            if ours:
                removed += int(await r.xdel(log_key, *ours))
            if len(batch) < 1000:
                break
            last = batch[-1][0].decode() if isinstance(batch[-1][0], bytes) else str(batch[-1][0])
            start = "(" + last
        await r.hdel(cursors, job_id)
    except Exception as exc:
        log.warning("job_delete_user_log_failed", job_id=job_id, error=str(exc)[:200])
    return removed


async def _delete_rows(deps: Deps, job_id: uuid.UUID, deleted_by: str) -> asyncpg.Record | None:
    """Step 3 in one transaction; the job row as it was (None: it was deleted meanwhile)."""
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await store.lock_job(conn, job_id)
        if row is None:
            return None
        await deps.cache.begin_write(str(job_id))  # a reader's fill cannot put the old state back
        await conn.execute(
            "INSERT INTO deleted_jobs (job_id, user_id, created_at, deleted_by, total_cost) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (job_id) DO NOTHING",
            job_id,
            row["user_id"],
            row["created_at"],
            deleted_by,
            row["total_cost"],
        )
        await conn.execute(
            "INSERT INTO deleted_job_costs (job_id, stage_name, api_name, cost, created_at)"
            " SELECT job_id, stage_name, api_name, cost, created_at FROM job_costs WHERE job_id = $1 ORDER BY id",
            job_id,
        )
        await conn.execute("UPDATE jobs SET retry_of = NULL WHERE retry_of = $1", job_id)
        await conn.execute("UPDATE jobs SET retried_by = NULL WHERE retried_by = $1", job_id)
        for table in ("orchestrator_outbox", "orchestrator_handled", "job_cleanup_log"):
            await conn.execute(f"DELETE FROM {table} WHERE job_id = $1", job_id)
        await conn.execute("DELETE FROM jobs WHERE job_id = $1", job_id)  # stages, costs, webhooks: cascade
    return row


async def delete_job(deps: Deps, job_id: uuid.UUID, *, owner: str | None, deleted_by: str) -> Deleted:
    """Delete ``job_id`` (see the module docstring). ``owner``: the caller must own it (None: an
    operator). 404 when there is no such job for the caller; a repeat by the owner is ``already``."""
    jid = str(job_id)
    row = await store.get_job(deps.pool, job_id)
    if row is None or (owner is not None and row["user_id"] != owner):
        tomb = await _tombstone(deps.pool, job_id) if row is None else None
        if tomb is not None and (owner is None or tomb["user_id"] == owner):
            return Deleted(jid, tomb["user_id"], already=True)
        raise NotFound("Job not found")  # another user's job is not found either
    user_id, was = row["user_id"], row["status"]
    if was not in FINAL_STATUSES:
        message = DELETED_MESSAGE if owner is not None else OPERATOR_DELETED_MESSAGE

        def exists(r: asyncpg.Record | None) -> None:
            if r is None:
                raise NotFound("Job not found")

        try:
            await cancel(deps, job_id, message, check=exists)
        except JobNotCancellable:
            pass  # it became final meanwhile
        except NotFound:
            return Deleted(jid, user_id, already=True)  # deleted by a concurrent call
        await _settle(deps, jid)  # the cancelled stage has stopped writing
    files = await delete_files(deps, jid, user_id)
    gone = await _delete_rows(deps, job_id, deleted_by)
    if gone is None:  # a concurrent delete won
        return Deleted(jid, user_id, already=True)
    files += await delete_files(deps, jid, user_id)  # what a worker still running stored meanwhile
    await delete_redis_keys(deps, jid, with_cancel_flag=was in FINAL_STATUSES)
    await delete_user_log_entries(deps, user_id, jid)  # after the job's log: nothing is copied again
    await delete_redis_keys(deps, jid, with_cancel_flag=False)  # a status read racing the commit
    metrics.JOBS_DELETED.labels("owner" if owner is not None else "operator").inc()
    log.info("job_deleted", job_id=jid, was=was, files=files, by=deleted_by)
    return Deleted(jid, user_id, already=False, was=was, files=files)
