"""File cleanup: at once when a job ends, and on a schedule.

Policy (spec): on success reference images and clips are deleted at once and the final video
is kept 14 days; on failure everything is kept 7 days (a cancel deletes the intermediates at
once and keeps the audio). ``files_expire_at`` holds that date.

The scheduled run (one replica at a time, under a Redis lease that also spaces the runs):
1. every final job past ``files_expire_at`` loses all its files; ``files_cleaned_at`` is set
   once nothing failed;
2. every bucket is scanned: objects of jobs already cleaned or expired, intermediates of
   completed jobs (an earlier failed delete) and orphans (no job row, older than a grace
   period so an upload in flight is safe) are deleted.
Every action is logged in ``job_cleanup_log``; what failed is simply found again next run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
import structlog
from montage_common.storage import layout
from montage_common.storage.layout import BUCKETS, INTERMEDIATE_BUCKETS
from montage_contracts.pipeline import FINAL_STATUSES, JobStatus

from montage_orchestrator import metrics
from montage_orchestrator.store import as_uuid

if TYPE_CHECKING:
    from montage_orchestrator.deps import Deps

log = structlog.get_logger()


async def _log(  # noqa: PLR0917
    pool: asyncpg.Pool, job_id: uuid.UUID | None, key: str, status: str, reason: str, error: str | None = None
) -> None:
    await pool.execute(
        "INSERT INTO job_cleanup_log (job_id, object_key, action, status, reason, error)"
        " VALUES ($1, $2, 'delete', $3, $4, $5)",
        job_id,
        key,
        status,
        reason,
        error,
    )
    metrics.CLEANUP_DELETED.labels(status).inc()


async def delete_keys(deps: Deps, job_id: uuid.UUID | None, keys: Sequence[str], reason: str) -> bool:
    """Delete objects and log each; True when all went."""
    if not keys:
        return True
    try:
        await deps.storage.delete(list(keys))
    except Exception as exc:
        log.warning("cleanup_delete_failed", job_id=str(job_id), count=len(keys), error=str(exc)[:200])
        for key in keys:
            await _log(deps.pool, job_id, key, "failed", reason, str(exc)[:500])
        return False
    for key in keys:
        await _log(deps.pool, job_id, key, "deleted", reason)
    return True


async def delete_prefixes(deps: Deps, job_id: uuid.UUID, prefixes: Sequence[str], reason: str) -> bool:
    ok = True
    for prefix in prefixes:
        try:
            objects = await deps.storage.list(prefix)
        except Exception as exc:
            log.warning("cleanup_list_failed", prefix=prefix, error=str(exc)[:200])
            ok = False
            continue
        ok = await delete_keys(deps, job_id, [o.key for o in objects], reason) and ok
    return ok


@dataclass
class CleanupReport:
    expired_jobs: int = 0
    deleted: int = 0
    failed: int = 0


def _job_part(key: str) -> str:
    bucket, _, path = key.partition("/")
    parts = path.split("/")
    index = 1 if bucket == "audio-uploads" else 0
    return parts[index] if len(parts) > index + 1 else ""


async def run(deps: Deps, limit: int = 500) -> CleanupReport:
    """One scheduled cleanup pass (call under the lease; see :func:`run_if_due`)."""
    report = CleanupReport()
    rows = await deps.pool.fetch(
        "SELECT job_id, user_id FROM jobs WHERE status IN ('completed', 'failed') AND files_cleaned_at IS NULL"
        " AND files_expire_at < now() ORDER BY files_expire_at LIMIT $1",
        limit,
    )
    for row in rows:
        job_id = str(row["job_id"])
        if await delete_prefixes(deps, row["job_id"], layout.job_prefixes(job_id, row["user_id"]), "expired"):
            await deps.pool.execute("UPDATE jobs SET files_cleaned_at = now() WHERE job_id = $1", row["job_id"])
            await deps.redis.delete(deps.keys.job_status_cache(job_id))
            report.expired_jobs += 1
    now = time.time()
    for bucket in BUCKETS:
        objects = await deps.storage.list(f"{bucket}/")
        ids = {_job_part(o.key) for o in objects}
        uuids = [u for u in (as_uuid(i) for i in ids) if u is not None]
        jobs = {
            str(r["job_id"]): r
            for r in await deps.pool.fetch(
                "SELECT job_id, status, files_expire_at, files_cleaned_at FROM jobs WHERE job_id = ANY($1::uuid[])",
                uuids,
            )
        }
        for obj in objects:
            reason = _reason(bucket, jobs.get(_job_part(obj.key)), now - obj.modified_at, deps)
            if reason is None:
                continue
            job_uuid = as_uuid(_job_part(obj.key))
            if await delete_keys(deps, job_uuid if reason != "orphan" else None, [obj.key], reason):
                report.deleted += 1
            else:
                report.failed += 1
    log.info("cleanup_done", expired_jobs=report.expired_jobs, deleted=report.deleted, failed=report.failed)
    return report


def _reason(bucket: str, job: asyncpg.Record | None, age: float, deps: Deps) -> str | None:
    if job is None:
        return "orphan" if age >= deps.settings.orphan_grace_seconds else None
    if job["files_cleaned_at"] is not None:
        return "expired"
    expire: datetime | None = job["files_expire_at"]
    if job["status"] in FINAL_STATUSES and expire is not None and expire < datetime.now(UTC):
        return "expired"
    if bucket in INTERMEDIATE_BUCKETS and job["status"] == JobStatus.COMPLETED:
        return "intermediate"
    return None


async def run_if_due(deps: Deps, holder: str) -> CleanupReport | None:
    """Run when no replica ran within ``cleanup_interval_seconds`` (a lease spaces the runs)."""
    lease = deps.keys.lease("cleanup")
    ttl_ms = int(deps.settings.cleanup_interval_seconds * 1000)
    if not await deps.redis.set(lease, holder, px=ttl_ms, nx=True):
        return None
    return await run(deps)
