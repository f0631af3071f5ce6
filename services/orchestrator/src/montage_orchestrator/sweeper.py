"""Background sweeps, safe on every replica at once:

- **timeouts**: jobs past ``deadline_at`` fail with TIMEOUT even if every worker died
  (``FOR UPDATE SKIP LOCKED``: each overdue job is taken by one replica);
- **outbox**: entries a crashed process did not send are sent (row locks, see ``outbox``);
- **reconcile**: stages whose task or result Redis lost are dispatched again (see ``reconciler``);
- **cleanup**: the scheduled file cleanup, at most once per interval (a Redis lease);
- **housekeeping**: old handled-result records are pruned; the active-jobs gauge.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from montage_contracts.errors import ErrorCode
from montage_contracts.pipeline import timeout_message

from montage_orchestrator import cleanup, metrics, store
from montage_orchestrator.deps import Deps
from montage_orchestrator.health import export_stage_gauges
from montage_orchestrator.reconciler import Reconciler
from montage_orchestrator.transitions import Effects, after_commit, fail_job

log = structlog.get_logger()

HANDLED_RETENTION_SECONDS = 7 * 24 * 3600
BATCH = 50


async def fail_overdue(deps: Deps) -> int:
    """Fail every job past its deadline; returns how many."""
    done: list[tuple[Effects, int]] = []
    async with deps.pool.acquire() as conn, conn.transaction():
        for row in await store.overdue_jobs(conn, BATCH):
            eff = Effects(job_id=str(row["job_id"]))
            with structlog.contextvars.bound_contextvars(job_id=eff.job_id):
                message = timeout_message(deps.settings.job_timeout_seconds)
                await fail_job(conn, deps, eff, ErrorCode.TIMEOUT, message)
            done.append((eff, await deps.outbox.add(conn, row["job_id"], eff.emits)))
    for eff, outbox_id in done:
        await after_commit(deps, eff)
        await deps.outbox.send_quietly(outbox_id)
    return len(done)


class Sweeper:
    def __init__(self, deps: Deps, holder: str) -> None:
        self.deps = deps
        self.holder = holder
        self.reconciler = Reconciler(deps)

    async def tick(self) -> None:
        s = self.deps.settings
        await fail_overdue(self.deps)
        await self.deps.outbox.sweep(s.outbox_grace_seconds)
        if self.reconciler.due():
            await self.reconciler.tick()
        await cleanup.run_if_due(self.deps, self.holder)
        metrics.ACTIVE_JOBS.set(await store.count_active(self.deps.pool))
        await export_stage_gauges(self.deps)

    async def run(self, stop: asyncio.Event) -> None:
        ticks = 0
        while not stop.is_set():
            try:
                await self.tick()
                ticks += 1
                if ticks % 720 == 1:
                    await store.prune_handled(self.deps.pool, HANDLED_RETENTION_SECONDS)
            except Exception as exc:
                log.warning("sweep_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.deps.settings.sweep_interval_seconds)
