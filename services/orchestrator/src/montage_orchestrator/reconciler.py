"""Postgres is the source of truth; Redis may forget. The reconciler re-dispatches lost and stuck stages.

A stage is *dispatched* when ``job_stages`` says ``running`` under some dispatch number. Redis
may then lose its task or its result: a failover that drops the last writes, a restart without
persistence, ``FLUSHALL``, a restore from an older snapshot. Nothing else would notice; the
job would sit in ``processing`` until its timeout.

Every ``JOB_HEARTBEAT_SECONDS / 2`` (at most as often as the sweeper ticks) each orchestrator
replica:

1. reads the running stages of unfinished jobs dispatched more than the bound ago
   (``bound = 2 x JOB_HEARTBEAT_SECONDS``) whose job has no unsent outbox entry;
2. asks Redis, per partition and in one script (``montage_streams.in_flight``), whether anything
   of those jobs is in flight: a task of any stage unread, pending or waiting for a retry, or a
   result the orchestrator has not handled yet (a result is acknowledged only after its
   Postgres transaction committed, so a handled one shows in Postgres);
3. reads the stages' liveness keys (``keys.stage_alive``: a worker running the stage refreshes
   it every heartbeat interval, TTL twice that, value = the dispatch number);
4. a stage with nothing in flight and no live worker on its dispatch is a *suspect*; one that is
   still a suspect ``bound`` seconds after this replica first saw it is dispatched again, in one
   transaction with its job row locked (``FOR UPDATE SKIP LOCKED``: a replica handling the job,
   or another reconciler, makes this one skip it) after checking that the stage is still running
   under the same dispatch. The new task goes out through the outbox, with a new dispatch
   number; a result of the old dispatch that turns up later is ignored by the pipeline.
5. a stage whose worker is alive on its dispatch but reported no progress (the value of its
   liveness key, :class:`~montage_contracts.messages.StageAlive`: started, a progress text, a
   cost) for ``STAGE_STALL_SECONDS`` is *stuck*: a live worker that no longer moves (a handler
   waiting for a wake-up that never comes) keeps its claim renewed, so neither the stream
   runtime nor step 4 would ever take it away. It is dispatched again at once, under the same
   lock and check, and its old task is removed from its stream (the worker on it finds its
   claim gone at its hand-off, which then emits nothing); after ``STAGE_MAX_DISPATCHES``
   dispatches the job fails with ``MODULE_FAILURE`` and a message that says so
   (:func:`~montage_orchestrator.decisions.on_stuck`).

Safe on every replica at once: the row lock and the dispatch check make one of them win; the
others see a changed dispatch. A backlog too long to scan (``SCAN_LIMIT`` entries) makes the
reconciler wait rather than guess. Lost SSE events need nothing here: a client that connects
again gets the job's state from Postgres first (``montage_gateway.sse``), and live events of the
re-dispatched stage follow.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import asyncpg
import structlog
from montage_contracts.keys import ORCHESTRATOR_GROUP
from montage_contracts.messages import StageAlive, dispatch_message_id
from montage_contracts.pipeline import STAGES, StageStatus
from montage_streams import REDIS_DOWN, discard, in_flight

from montage_orchestrator import decisions, metrics, store
from montage_orchestrator.deps import Deps
from montage_orchestrator.pipeline import dispatch_stage
from montage_orchestrator.transitions import Effects, after_commit, begin, fail_job

log = structlog.get_logger()

SCAN_LIMIT = 10_000  # entries per stream (and delayed set) one look may scan
BATCH = 500  # running stages looked at per tick

_RUNNING_SQL = """
SELECT s.job_id, s.stage_name, s.dispatch
FROM job_stages s JOIN jobs j ON j.job_id = s.job_id
WHERE s.status = 'running' AND j.status IN ('queued', 'processing')
  AND s.started_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM orchestrator_outbox o WHERE o.job_id = s.job_id)
ORDER BY s.started_at
LIMIT $2
"""


@dataclass(frozen=True, slots=True)
class Dispatched:
    job_id: uuid.UUID
    stage: str
    dispatch: int


async def running_stages(pool: asyncpg.Pool, older_than_seconds: float, limit: int = BATCH) -> list[Dispatched]:
    rows = await pool.fetch(_RUNNING_SQL, older_than_seconds, limit)
    return [Dispatched(r["job_id"], r["stage_name"], r["dispatch"]) for r in rows]


@dataclass(frozen=True, slots=True)
class Stuck:
    """A running stage whose live worker reported no progress for ``idle`` seconds."""

    stage: Dispatched
    idle: float


class Reconciler:
    """See the module docstring. One per orchestrator process; :meth:`tick` from the sweeper."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.heartbeat = deps.settings.job_heartbeat_seconds
        self.bound = 2 * self.heartbeat
        self.stall = deps.settings.stage_stall_seconds
        self._suspects: dict[Dispatched, float] = {}  # first seen without any trace (monotonic)
        self._last = -1e18

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.heartbeat / 2

    async def tick(self) -> int:
        """Look once; returns how many stages were dispatched again (or failed, when stuck)."""
        self._last = time.monotonic()
        candidates = await running_stages(self.deps.pool, self.bound)
        lost, stuck = await self.classify(candidates)
        now = time.monotonic()
        self._suspects = {d: self._suspects.get(d, now) for d in lost}
        redone = 0
        for d, since in list(self._suspects.items()):
            if now - since >= self.bound and await self.redispatch(d):
                self._suspects.pop(d, None)
                redone += 1
        for s in stuck:
            if await self.unstick(s):
                redone += 1
        return redone

    async def untraced(self, candidates: list[Dispatched]) -> list[Dispatched]:
        """The candidates with nothing of their job in flight in Redis and no live worker."""
        return (await self.classify(candidates))[0]

    async def classify(self, candidates: list[Dispatched]) -> tuple[list[Dispatched], list[Stuck]]:
        """``(lost, stuck)``: the candidates with nothing of their job in flight in Redis and no
        live worker on their dispatch; and those whose live worker on their dispatch reported no
        progress for ``STAGE_STALL_SECONDS`` (in flight or not: a live consumer keeps its claim)."""
        keys = self.deps.keys
        by_partition: dict[int, list[Dispatched]] = defaultdict(list)
        for d in candidates:
            by_partition[keys.partition_of(str(d.job_id))].append(d)
        lost: list[Dispatched] = []
        stuck: list[Stuck] = []
        now_ms = time.time() * 1000
        for partition, group in by_partition.items():
            sources = [(keys.stage_stream(s, partition), keys.stage_group(s)) for s in STAGES]
            sources.append((keys.results_stream(partition), ORCHESTRATOR_GROUP))
            busy = await in_flight(
                self.deps.redis,
                sources,
                keys.delayed_zsets()[partition],
                {str(d.job_id) for d in group},
                limit=SCAN_LIMIT,
            )
            if busy is None:
                log.warning("reconcile_backlog_too_long", partition=partition, limit=SCAN_LIMIT)
            # One slot per partition (the keys share its tag), so one MGET.
            beats = await self.deps.redis.mget([keys.stage_alive(str(d.job_id), d.stage) for d in group])
            for d, raw in zip(group, beats, strict=True):
                alive = StageAlive.parse(raw)
                ours = alive is not None and alive.dispatch == d.dispatch
                if ours and alive is not None and alive.progress_ms:
                    idle = (now_ms - alive.progress_ms) / 1000
                    if idle >= self.stall:
                        stuck.append(Stuck(d, idle))
                elif busy is not None and not ours and str(d.job_id) not in busy:
                    lost.append(d)
        return lost, stuck

    async def redispatch(self, d: Dispatched) -> bool:
        """Dispatch the stage again if it is still running under ``d.dispatch``; True if done."""
        return await self._again(d, decisions.Redispatch("no task, result or worker in Redis"))

    async def unstick(self, s: Stuck) -> bool:
        """A stuck stage: its old task is removed from Redis (the worker on it finds its claim gone
        at its hand-off) and the stage dispatched again, or the job failed (:func:`decisions.on_stuck`)."""
        d = s.stage
        decision = decisions.on_stuck(d.stage, d.dispatch, self.deps.settings.stage_max_dispatches, s.idle)
        if not await self._again(d, decision):
            return False
        outcome = "failed" if isinstance(decision, decisions.FailJob) else "redispatched"
        metrics.STAGES_STUCK.labels(d.stage, outcome).inc()
        keys, partition = self.deps.keys, self.deps.keys.partition_of(str(d.job_id))
        with contextlib.suppress(*REDIS_DOWN):
            await discard(
                self.deps.redis,
                [(keys.stage_stream(d.stage, partition), keys.stage_group(d.stage))],
                keys.delayed_zsets()[partition],
                [dispatch_message_id(str(d.job_id), d.stage, d.dispatch)],
                separator="\n",  # never in a message id: the whole id is the prefix
            )
        return True

    async def _again(self, d: Dispatched, decision: decisions.Redispatch | decisions.FailJob) -> bool:
        """Apply ``decision`` if the stage is still running under ``d.dispatch``; True if done."""
        eff = Effects(job_id=str(d.job_id))
        with structlog.contextvars.bound_contextvars(job_id=eff.job_id, stage=d.stage):
            async with self.deps.pool.acquire() as conn, conn.transaction():
                job = await conn.fetchrow(
                    "SELECT * FROM jobs WHERE job_id = $1 AND status IN ('queued', 'processing')"
                    " FOR UPDATE SKIP LOCKED",
                    d.job_id,
                )
                if job is None:
                    return False
                row = await store.get_stage(conn, d.job_id, d.stage)
                if row is None or row["status"] != StageStatus.RUNNING or row["dispatch"] != d.dispatch:
                    return False
                eff.total = job["total_cost"]
                eff.row = job
                await begin(self.deps, eff)
                if isinstance(decision, decisions.FailJob):
                    await fail_job(conn, self.deps, eff, decision.code, decision.message)
                else:
                    await dispatch_stage(conn, self.deps, job, d.stage, eff)
                outbox_id = await self.deps.outbox.add(conn, d.job_id, eff.emits)
            if isinstance(decision, decisions.FailJob):
                log.warning("stuck_stage_failed_job", dispatch=d.dispatch, error=decision.message)
            else:
                log.warning("stage_redispatched", lost_dispatch=d.dispatch, reason=decision.reason)
                metrics.STAGES_REDISPATCHED.labels(d.stage).inc()
        await after_commit(self.deps, eff)
        await self.deps.outbox.send_quietly(outbox_id)
        return True
