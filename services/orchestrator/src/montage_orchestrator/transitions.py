"""Job-level transitions shared by the pipeline, the cancels (the owner's and the operator's) and the sweepers.

Each runs inside the caller's transaction (the job row locked) and records its side effects in
:class:`Effects`: the emits that go out with the hand-off, and what happens after the commit
(the cache write, the cancel flag and the removal of the job's queued tasks, deleting
intermediate files).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import asyncpg
import structlog
from montage_common.events import event_emit
from montage_common.storage import layout
from montage_contracts.api import ErrorData
from montage_contracts.errors import ErrorCode, MontageError, job_retryable
from montage_contracts.events import EventData
from montage_contracts.pipeline import FINAL_STATUSES, JobStatus
from montage_streams import Emit

from montage_orchestrator import assets, cleanup, job_metrics, metrics, purge, store
from montage_orchestrator.deps import Deps
from montage_orchestrator.errors import JobNotCancellable
from montage_orchestrator.jobs import snapshot

log = structlog.get_logger()

CANCELLED_MESSAGE = "Job cancelled by user"
OPERATOR_CANCEL_MESSAGE = "Job cancelled by an operator"
BUDGET_MESSAGE = "Budget limit exceeded"


@dataclass
class Effects:
    job_id: str
    total: Decimal = Decimal(0)
    emits: list[Emit] = field(default_factory=list)
    tomb: bytes | None = None
    row: asyncpg.Record | None = None
    cancel_flag: bool = False  # also: the job's tasks are removed from the streams (``purge``)
    settle_purge: bool = False  # the purge waits for the job's results in flight (not from the pipeline)
    delete_prefixes: list[str] = field(default_factory=list)
    committed: list[Callable[[], None]] = field(default_factory=list)  # metrics and logs, once committed

    def event(self, deps: Deps, data: EventData) -> None:
        """Log one event of the job (its name is its payload's type), sent with the hand-off."""
        self.emits.append(event_emit(deps.keys, self.job_id, data))


async def begin(deps: Deps, eff: Effects) -> None:
    """Call inside the transaction, once the change is decided and before the commit."""
    if eff.tomb is None:
        eff.tomb = await deps.cache.begin_write(eff.job_id)


async def after_commit(deps: Deps, eff: Effects) -> None:
    """Metrics and logs of the change, cache write-through, cancel flag, intermediate-file cleanup; each best effort."""
    for note in eff.committed:
        note()
    if eff.row is not None and eff.row["status"] in FINAL_STATUSES:
        deps.turns_due.set()  # its slot is free: a waiting job's turn (``admission``)
        if eff.row.get("webhook_url"):
            deps.webhooks_due.set()  # its delivery row was written with the status (``webhooks``)
        deps.forecasts.drop()  # the door reads the system again
    if eff.tomb is not None and eff.row is not None:
        try:
            await deps.cache.end_write(eff.job_id, eff.tomb, snapshot(eff.row))
        except Exception as exc:
            log.warning("status_cache_write_failed", job_id=eff.job_id, error=str(exc)[:200])
    if eff.cancel_flag:
        try:
            await deps.redis.set(deps.keys.job_cancel(eff.job_id), "1", ex=deps.settings.cancel_flag_seconds)
        except Exception as exc:
            log.warning("cancel_flag_failed", job_id=eff.job_id, error=str(exc)[:200])
        await purge.purge_job(deps, eff.job_id, settle=eff.settle_purge)
    if eff.delete_prefixes:
        await cleanup.delete_prefixes(deps, uuid.UUID(eff.job_id), eff.delete_prefixes, reason="job_final")


def job_failed(deps: Deps, eff: Effects, code: ErrorCode, message: str) -> None:
    """What a failed job sends and does besides its rows: the ``error`` event, the cancel flag (any
    worker still on this job stops before its next step), the metric and the log."""
    eff.event(deps, ErrorData(error=message, code=code, retryable=job_retryable(code)))
    eff.cancel_flag = True
    job_id = eff.job_id

    def note() -> None:
        metrics.JOBS_FAILED.labels(code).inc()
        job_metrics.finished(eff.row, job_metrics.failure_outcome(code))
        log.info("job_failed", job_id=job_id, code=code, error=message[:200])

    eff.committed.append(note)


async def fail_job(conn: asyncpg.Connection, deps: Deps, eff: Effects, code: ErrorCode, message: str) -> asyncpg.Record:
    """Mark the job failed: error fields, running stages failed, files kept 7 days, ``error`` event."""
    job_id = uuid.UUID(eff.job_id)
    await begin(deps, eff)
    await store.fail_running_stages(conn, job_id, message)
    row = await store.update_job(
        conn,
        job_id,
        status=JobStatus.FAILED,
        error_message=message,
        error_code=code,
        completed_at=await conn.fetchval("SELECT now()"),
        files_expire_at=await conn.fetchval(
            "SELECT now() + $1::interval", timedelta(days=deps.settings.failed_retention_days)
        ),
    )
    job_failed(deps, eff, code, message)
    eff.settle_purge = True
    eff.row = row
    return row


# What a cancel may do besides its own rows: write the operator's action log row, in the same
# transaction, whether the cancel was done or refused (``refusal``).
Audit = Callable[[asyncpg.Connection, asyncpg.Record | None, MontageError | None], Awaitable[None]]


async def cancel(
    deps: Deps,
    job_id: uuid.UUID,
    message: str,
    *,
    check: Callable[[asyncpg.Record | None], None],
    audit: Audit | None = None,
) -> asyncpg.Record:
    """Cancel a queued or running job: the one cancel transaction, the owner's and the operator's.

    With the job row locked: ``check`` refuses the caller (it raises: 404, 403), a final job is
    refused with :class:`JobNotCancellable` (400, one status for this cause wherever it is asked),
    else the job fails with code ``CANCELLED`` and ``message`` (:func:`fail_job`), its events go
    through the outbox. ``audit`` runs last in the transaction, so a refusal is logged too.
    After the commit: the cancel flag, the cache, the intermediate files, the outbox entry.
    Returns the job row as it was before the cancel.
    """
    eff = Effects(job_id=str(job_id))
    outbox_id = None
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await store.lock_job(conn, job_id)
        refusal: MontageError | None = None
        try:
            check(row)
            assert row is not None
            if row["status"] in FINAL_STATUSES:
                raise JobNotCancellable(f"Job already {row['status']}; it cannot be cancelled", job_id=str(job_id))
        except MontageError as err:
            refusal = err
        if refusal is None:
            await fail_job(conn, deps, eff, ErrorCode.CANCELLED, message)
            await assets.drop_previews(conn, job_id)
            outbox_id = await deps.outbox.add(conn, job_id, eff.emits)
        if audit is not None:
            await audit(conn, row, refusal)
    if refusal is not None:
        raise refusal
    assert row is not None and outbox_id is not None
    eff.delete_prefixes = [*layout.intermediate_prefixes(str(job_id)), layout.preview_prefix(str(job_id))]
    await after_commit(deps, eff)
    await deps.outbox.send_quietly(outbox_id)
    return row
