"""Background polling: keeps every non-final Nexus job in sync with its RAGNAROK workflow.

Each cycle leases a batch of due jobs (:meth:`JobStore.claim`), polls their workflows with bounded
concurrency and writes the results back, scheduling the next poll with backoff. A poll is only
started while this replica's lease is certain to outlast it (the call's timeout plus a margin,
measured from before the claim), so no two replicas ever poll one workflow at the same time; a
dead replica's leases expire and the jobs are claimed by the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import structlog
from montage_contracts.pipeline import JOB_STATUSES, JobStatus

from montage_ragnarok.errors import RagnarokAPIError, WorkflowNotFound
from montage_ragnarok.events import EventPublisher
from montage_ragnarok.metrics import JOBS, POLL_LAG, POLL_LAG_LAST, POLLS
from montage_ragnarok.ragnarok import RagnarokClient, Workflow
from montage_ragnarok.settings import ProxySettings
from montage_ragnarok.store import FINAL, Claim, Job, JobStore

log = structlog.get_logger()

# RAGNAROK's statuses are queued|processing|completed|failed; tolerate a few common synonyms.
_STATUS_ALIASES = {
    "pending": "queued",
    "running": "processing",
    "in_progress": "processing",
    "succeeded": "completed",
    "success": "completed",
    "error": "failed",
    "cancelled": "failed",
    "canceled": "failed",
}


def normalise_status(status: str) -> JobStatus:
    status = status.lower()
    status = _STATUS_ALIASES.get(status, status)
    return JobStatus(status) if status in JOB_STATUSES else JobStatus.PROCESSING


class Poller:
    def __init__(
        self,
        settings: ProxySettings,
        store: JobStore,
        ragnarok: RagnarokClient,
        events: EventPublisher,
        replica_id: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ragnarok = ragnarok
        self.events = events
        self.owner = replica_id
        self.margin = max(0.1 * settings.lease_seconds, 0.2)

    def interval(self, streak: int) -> float:
        """Seconds to the next poll after ``streak`` polls without progress (jittered ±10 %)."""
        s = self.settings
        base = min(s.poll_interval_seconds * s.poll_backoff_factor ** min(streak, 50), s.poll_max_interval_seconds)
        return base * random.uniform(0.9, 1.1)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set."""
        log.info("poller_started", replica=self.owner)
        loop = asyncio.get_running_loop()
        failures = 0
        next_gauge = 0.0
        while not stop.is_set():
            claimed = 0
            try:
                claimed = await self.tick()
                if loop.time() >= next_gauge:
                    next_gauge = loop.time() + self.settings.jobs_gauge_interval_seconds
                    for status, n in (await self.store.count_by_status()).items():
                        JOBS.labels(status).set(n)
                failures = 0
            except Exception as exc:  # the database or Redis is down: keep trying, slower
                failures += 1
                log.warning("poll_cycle_failed", error=f"{type(exc).__name__}: {exc}", failures=failures)
            if claimed >= self.settings.poll_batch_size:
                continue  # more may be due right now
            pause = self.settings.poll_tick_seconds * (2 ** min(failures, 5))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        log.info("poller_stopped", replica=self.owner)

    async def tick(self) -> int:
        """One cycle: claim due jobs and handle them; returns how many were claimed."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        claims = await self.store.claim(self.owner, self.settings.lease_seconds, self.settings.poll_batch_size)
        if not claims:
            return 0
        deadline = started + self.settings.lease_seconds - self.margin
        lags = [max(c.lag_seconds, 0.0) for c in claims]
        for lag in lags:
            POLL_LAG.observe(lag)
        POLL_LAG_LAST.set(max(lags))
        limit = asyncio.Semaphore(self.settings.poll_concurrency)
        await asyncio.gather(*(self._guarded(c, deadline, limit) for c in claims))
        return len(claims)

    async def _guarded(self, claim: Claim, deadline: float, limit: asyncio.Semaphore) -> None:
        job = claim.job
        async with limit:
            with structlog.contextvars.bound_contextvars(
                job_id=job.job_id, workflow_id=job.workflow_id, trace_id=job.trace_id
            ):
                try:
                    await self._handle(claim, deadline)
                except Exception as exc:  # the lease expires and the job is retried
                    POLLS.labels("crashed").inc()
                    log.warning("poll_job_failed", error=f"{type(exc).__name__}: {exc}")

    async def _handle(self, claim: Claim, deadline: float) -> None:
        job = claim.job
        if job.final:  # stored earlier, event not yet published
            await self._publish(job)
            return
        if claim.age_seconds > self.settings.job_max_age_seconds:
            POLLS.labels("expired").inc()
            await self._finish(
                job, JobStatus.FAILED, None, f"No final status from RAGNAROK after {claim.age_seconds:.0f}s"
            )
            return
        if asyncio.get_running_loop().time() + self.settings.ragnarok_timeout_seconds > deadline:
            POLLS.labels("deferred").inc()
            await self.store.release(job.job_id, self.owner)
            return
        try:
            workflow = await self.ragnarok.workflow(job.workflow_id, trace_id=job.trace_id)
        except WorkflowNotFound as err:
            POLLS.labels("not_found").inc()
            await self._finish(job, JobStatus.FAILED, None, err.detail)
            return
        except RagnarokAPIError as err:
            POLLS.labels("error").inc()
            streak = claim.poll_streak + 1
            delay = self.interval(streak)
            if err.retry_after and err.retry_after.isdigit():
                delay = max(delay, min(float(err.retry_after), self.settings.poll_max_interval_seconds))
            await self.store.record_failure(job.job_id, self.owner, streak=streak, next_poll_in=delay)
            log.info("poll_failed", status=err.status, detail=err.detail, retry_in=round(delay, 2))
            return
        status = normalise_status(workflow.status)
        if status in FINAL:
            POLLS.labels(status).inc()
            await self._finish(job, status, workflow, workflow.error)
            return
        POLLS.labels("pending").inc()
        streak = 0 if status != job.status else claim.poll_streak + 1
        await self.store.record_progress(
            job.job_id, self.owner, status=status, streak=streak, next_poll_in=self.interval(streak)
        )
        if status != job.status:
            log.info("job_status_changed", status=status, previous=job.status)

    async def _finish(self, job: Job, status: str, workflow: Workflow | None, error: str | None) -> None:
        stored = await self.store.record_final(
            job.job_id,
            self.owner,
            status=status,
            video_url=workflow.video_url if workflow else None,
            cost_usd=workflow.cost_usd if workflow else None,
            quality_score=workflow.quality_score if workflow else None,
            error=error if status == JobStatus.FAILED else None,
        )
        if not stored:
            log.warning("lease_lost", status=status)
            return
        log.info("job_finished", status=status)
        final = await self.store.get(job.job_id)
        if final is not None:
            await self._publish(final)

    async def _publish(self, job: Job) -> None:
        try:
            await self.events.job_finished(job)
        except Exception as exc:
            log.warning("event_publish_failed", error=f"{type(exc).__name__}: {exc}")
            await self.store.release(job.job_id, self.owner, retry_in=self.interval(1))
            return
        await self.store.mark_published(job.job_id, self.owner)
