"""The stage worker process: one stage's stream, read in its own consumer group.

``python -m montage_stages --stage video_generator`` runs :class:`StageWorker` on
``keys.stage_stream(stage)`` through the stream runtime. For each :class:`StageTask` it checks
the cancel flag, builds a :class:`StageContext` wired to the results stream, runs the stage's
``process`` and returns the :class:`StageResult`, which the runtime writes atomically with
the task's ack. Progress texts and costs go out as they happen (``StageProgress``,
``StageCost``) so the user sees them live and the orchestrator enforces the budget on each.

Liveness: while a task runs, the worker refreshes ``keys.stage_alive(job_id, stage)`` (value:
:class:`StageAlive`, the dispatch number and when the task last made progress: its start, a
progress text, a cost; TTL ``2 x JOB_HEARTBEAT_SECONDS``) every ``JOB_HEARTBEAT_SECONDS``. The
orchestrator's reconciler dispatches a stage again when Redis has neither its task nor its
result and no worker has reported on it for that long, or when its worker reported no progress
for ``STAGE_STALL_SECONDS`` (``montage_orchestrator.reconciler``). Every background loop here
ends by a stop signal of its own (an ``asyncio.Event``, waited on with a bound), not only by a
cancel, which redis-py may swallow when it lands mid-command.

Budget: each task runs with a :class:`~montage_common.budget.JobBudget` (``ctx.budget``) seeded from
the task's ``cost_limit`` and ``budget_remaining``; providers and clips reserve their price in the
job's ledger before each call, every reported cost settles there, the task's lease is renewed every
``JOB_HEARTBEAT_SECONDS`` and its reservations dropped when it ends. A refused reservation ends the
task with ``StageResult(ok=False, code="BUDGET_EXCEEDED")`` carrying the costs so far.

Fan-out (video_generator, ``CLIP_FANOUT``, on by default): the process also reads the clip
streams (``keys.clip_stream(p)``, group ``clips``) with ``CLIP_CONCURRENCY`` clips at once, beside
its stage consumers, and the stage's coordinator hands each clip to them (:mod:`clip_fanout`), so
every video_generator process renders a share of every job's clips.

Failures: a :class:`RetryableError` is retried by the runtime (2 s, 4 s, 8 s); any other error
dead-letters the task and :meth:`StageWorker.dead_letter` tells the orchestrator with a failed
``StageResult``. A cancelled job yields ``StageResult(ok=False, code="CANCELLED")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated

import msgspec
import structlog
from montage_common import tracing
from montage_common.budget import BudgetLedger, JobBudget, Seed
from montage_common.liveness import Watchdog
from montage_common.storage import Storage, layout
from montage_contracts.errors import BudgetExceededError, ErrorCode, JobCancelled
from montage_contracts.keys import Keys
from montage_contracts.messages import (
    ErrorInfo,
    StageAlive,
    StageCost,
    StagePreview,
    StageProgress,
    StageResult,
    StageTask,
    dispatch_message_id,
    encode,
    task_decoder,
)
from montage_contracts.models import CostItem
from montage_contracts.pipeline import STAGES
from montage_streams import (
    DeadLetter,
    DeadLetterHook,
    Delivery,
    Emit,
    Handler,
    RetryPolicy,
    StreamConsumer,
    StreamProducer,
    default_consumer_name,
)
from msgspec import Meta
from redis.asyncio import Redis

from montage_stages import faults
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_check import stage_provider
from montage_stages.runtime.provider_http import Providers
from montage_stages.runtime.provider_limits import ProviderLimits
from montage_stages.runtime.settings import StageSettings
from montage_stages.stages import PROCESS
from montage_stages.stages.clip_fanout import ClipFanout, ClipWorker

log = structlog.get_logger()

HEARTBEAT_SECONDS = 10
HEARTBEAT_TTL = 30
NULL_OUTPUT = msgspec.Raw(b"null")
_output_encoder = msgspec.json.Encoder(decimal_format="number")


class WorkerSettings(StageSettings, frozen=True, kw_only=True):
    """The stage-worker service: the stages' settings plus how the process consumes."""

    worker_concurrency: Annotated[int, Meta(description="tasks at once per process (the spec: 3)")] = 3
    stream_block_ms: Annotated[
        int, Meta(description="how long one blocking read of the stage stream waits for a task")
    ] = 1000
    retry_count: Annotated[int, Meta(description="retries of a retryable stage failure")] = 3
    retry_base_seconds: Annotated[
        float, Meta(description="delay before the first retry; each next one doubles (2 s, 4 s, 8 s)")
    ] = 2.0
    stage_timeout_seconds: Annotated[float, Meta(description="a task running longer is cancelled (and retried)")] = (
        900.0
    )
    clip_fanout: Annotated[
        bool,
        Meta(
            description="video_generator: hand each clip to the clip streams read by every video_generator process (false: a job's clips are rendered by the worker that took its task)"
        ),
    ] = True
    liveness_bound_seconds: Annotated[
        float,
        Meta(
            description="/healthz on the ops port fails (and Kubernetes restarts the worker) when its event loop, heartbeat loop, claim renewals or a running task's report have not turned for this long"
        ),
    ] = 60.0
    clip_stall_seconds: Annotated[
        float,
        Meta(
            description="video_generator: the stage gives up (GENERATION_ERROR) when no clip of its job finished for this long (lost clip entries are added again before that)"
        ),
    ] = 300.0
    clip_concurrency: Annotated[
        int, Meta(description="video_generator: clip entries rendered at once per process (0: MAX_PARALLEL_CLIPS)")
    ] = 0

    @property
    def retry_policy(self) -> RetryPolicy:
        """The stage consumer's retry rules (2 s, 4 s, 8 s; a stage past its timeout is retried)."""
        return RetryPolicy.exponential(
            self.retry_count, self.retry_base_seconds, handler_timeout=self.stage_timeout_seconds
        )


class Liveness:
    """A running task's report: its dispatch and when it last made progress (see :class:`StageAlive`)."""

    def __init__(self, dispatch: int) -> None:
        self.dispatch = dispatch
        self.progress_ms = int(time.time() * 1000)
        self.beat_at = time.monotonic()  # the report loop's last turn (the process's liveness)

    def touch(self) -> None:
        """The stage made progress (a progress text, a cost)."""
        self.progress_ms = int(time.time() * 1000)

    def value(self) -> str:
        return StageAlive(self.dispatch, self.progress_ms).value()


@contextlib.asynccontextmanager
async def job_liveness(redis: Redis, keys: Keys, task: StageTask, interval: float) -> AsyncIterator[Liveness]:
    """Report ``task``'s job and stage alive every ``interval`` seconds while the block runs, with
    when it last made progress (the block calls :meth:`Liveness.touch`).

    Best effort: a failed write is retried at the next beat (Redis down or flushed meanwhile).
    """
    key = keys.stage_alive(task.job_id, task.stage)
    ttl_ms = max(int(interval * 2000), 1)
    done = asyncio.Event()
    alive = Liveness(task.dispatch)

    async def beat() -> None:
        # Ends by `done`, not by a cancel: redis-py may swallow a cancel that lands mid-command.
        while not done.is_set():
            alive.beat_at = time.monotonic()
            with contextlib.suppress(Exception):
                await redis.set(key, alive.value(), px=ttl_ms)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), interval)

    beating = asyncio.create_task(beat(), name=f"alive-{task.job_id}-{task.stage}")
    try:
        yield alive
    finally:
        done.set()
        _, stuck = await asyncio.wait([beating], timeout=5.0)  # bounded: the hand-off must not wait on it
        for t in stuck:
            t.cancel()
        with contextlib.suppress(Exception):
            await redis.delete(key)


class StageWorker:
    """Runs one stage's tasks; see the module docstring."""

    def __init__(
        self, settings: WorkerSettings, stage: str, redis: Redis, storage: Storage, keys: Keys, *, consumer: str = ""
    ) -> None:
        if stage not in PROCESS:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        self.settings = settings
        self.stage = stage
        self.redis = redis
        self.storage = storage
        self.keys = keys
        self.process = PROCESS[stage]
        self.faults = faults.enabled(settings)
        # one pool of provider connections per process; the providers' slots and backoff shared in Redis
        self.providers = Providers(
            ProviderLimits(redis, keys, settings.provider_limits, lease_seconds=settings.provider_lease_seconds)
        )
        self.producer = StreamProducer(redis)
        self.ledger = BudgetLedger(redis, keys)  # every provider call and clip reserves its price here
        self._stopping = asyncio.Event()
        self.beat_at = time.monotonic()  # the heartbeat loop's last turn (the ops port's liveness reads it)
        self._reports: set[Liveness] = set()  # the running tasks' reports
        name = consumer or default_consumer_name()
        # One consumer per partition (a stream per partition; on Redis Cluster they live on
        # different nodes, and one XREADGROUP cannot span slots). The process's concurrency is
        # shared out: each partition runs ceil(concurrency / partitions) tasks at once.
        partitions = keys.all_partitions

        def per_partition(
            stream: Callable[[int], str], group: str, handler: Handler, *, concurrency: int, retry: RetryPolicy,
            on_dead_letter: DeadLetterHook,
        ) -> list[StreamConsumer]:  # fmt: skip
            return [
                StreamConsumer(
                    redis=redis,
                    stream=stream(p),
                    group=group,
                    handler=handler,
                    keys=keys,
                    consumer=name,
                    concurrency=max(1, math.ceil(concurrency / len(partitions))),
                    claim_idle_ms=settings.claim_idle_ms,
                    block_ms=settings.stream_block_ms,
                    retry=retry,
                    grace=settings.shutdown_grace_seconds,
                    on_dead_letter=on_dead_letter,
                )
                for p in partitions
            ]

        self.consumers = per_partition(
            lambda p: keys.stage_stream(stage, p), keys.stage_group(stage), self.handle,
            concurrency=settings.worker_concurrency, retry=settings.retry_policy, on_dead_letter=self.dead_letter,
        )  # fmt: skip
        self.consumer = self.consumers[0]
        self.fanout = stage == "video_generator" and settings.clip_fanout
        self.clip_consumers: list[StreamConsumer] = []
        if self.fanout:
            parallel = settings.clip_concurrency or settings.max_parallel_clips
            self.clip_worker = ClipWorker(settings, redis, storage, keys, consumer=name, parallel=parallel)
            self.clip_consumers = per_partition(
                keys.clip_stream, keys.clip_group(), self.clip_worker.handle, concurrency=parallel,
                retry=RetryPolicy(handler_timeout=settings.stage_timeout_seconds),
                on_dead_letter=self.clip_worker.dead_letter,
            )  # fmt: skip
        self.watchdog = self._watchdog()

    def results_stream(self, job_id: str) -> str:
        """Where the results of a job's tasks go: the results stream of the job's partition."""
        return self.keys.results_stream(self.keys.partition_of(job_id))

    # --- the handler --------------------------------------------------------------
    async def handle(self, d: Delivery) -> list[Emit]:
        task = task_decoder.decode(d.payload)
        interval = self.settings.job_heartbeat_seconds
        budget = JobBudget(
            self.ledger,
            task.job_id,
            holder=f"{self.consumer.consumer}:{self.stage}:{task.dispatch}:{uuid.uuid4().hex[:8]}",
            seed=Seed.of_task(task.cost_limit, task.budget_remaining),
            lease_seconds=3 * interval,
            before_call=self._cancel_check(task.job_id),  # no provider call after a cancel
        )
        attributes = {"montage.job_id": task.job_id, "montage.stage": self.stage, "montage.attempt": d.attempt}
        attributes |= {"montage.dispatch": task.dispatch, "montage.deliveries": d.delivery_count}
        # The task's span: a child of the orchestrator's dispatch (the task's traceparent), so every
        # provider, ragnarok-proxy and Redis call below is in the job's one trace.
        with tracing.span(
            f"stage {self.stage}", parent=task.traceparent, kind=tracing.SpanKind.CONSUMER, attributes=attributes
        ):
            async with job_liveness(self.redis, self.keys, task, interval) as alive, budget.leased(interval):
                self._reports.add(alive)
                try:
                    return await self._handle(d, task, alive, budget)
                finally:
                    self._reports.discard(alive)

    async def _handle(self, d: Delivery, task: StageTask, alive: Liveness, budget: JobBudget) -> list[Emit]:
        with structlog.contextvars.bound_contextvars(job_id=task.job_id, stage=self.stage, attempt=d.attempt):
            start = time.perf_counter()
            costs: list[CostItem] = []
            workdir = Path(tempfile.mkdtemp(prefix=f"montage-{self.stage}-"))
            fanout = None
            if self.fanout:
                fanout = ClipFanout(self.redis, self.keys, task.job_id, stall_seconds=self.settings.clip_stall_seconds)
            try:
                ctx = StageContext(
                    job_id=task.job_id,
                    settings=self.settings,
                    storage=self.storage,
                    workdir=workdir,
                    progress=self._progress(task, alive),
                    cost=self._cost(task, costs, alive, budget),
                    check_cancelled=self._cancel_check(task.job_id),
                    user_id=task.user_id,
                    providers=self.providers,
                    fanout=fanout,
                    budget=budget,
                    preview=self._preview(task, alive),
                )
                await ctx.check_cancelled()
                if self.faults:  # development only: a test made this stage fail
                    await faults.raise_injected(self.redis, self.keys, task.job_id, self.stage)
                log.info("stage_started", delivery=d.delivery_count)
                output = await self.process(ctx, task.job_id, task.input)
            except JobCancelled as exc:
                log.info("stage_cancelled")
                return [
                    self._result(task, d, start, costs, error=ErrorInfo(code=ErrorCode.CANCELLED, message=exc.message))
                ]
            except BudgetExceededError as exc:  # a reservation was refused: the call was not made
                log.info("stage_budget_exceeded")
                error = ErrorInfo(code=ErrorCode.BUDGET_EXCEEDED, message=exc.message)
                return [self._result(task, d, start, costs, error=error)]
            finally:
                if fanout is not None:
                    await fanout.close()
                await asyncio.to_thread(shutil.rmtree, workdir, True)
            log.info("stage_finished", seconds=round(time.perf_counter() - start, 3))
            return [self._result(task, d, start, costs, output=msgspec.Raw(_output_encoder.encode(output)))]

    def _result(
        self,
        task: StageTask,
        d: Delivery,
        start: float,
        costs: list[CostItem],
        *,
        output: msgspec.Raw = NULL_OUTPUT,
        error: ErrorInfo | None = None,
    ) -> Emit:
        result = StageResult(
            job_id=task.job_id,
            stage=self.stage,
            dispatch=task.dispatch,
            ok=error is None,
            output=output,
            error=error,
            duration_seconds=round(time.perf_counter() - start, 3),
            costs=costs,
            attempts=d.attempt,
            traceparent=tracing.traceparent(),
        )
        if error is not None:
            tracing.fail(tracing.current(), error.code, error.message)
        return Emit(
            self.results_stream(task.job_id),
            encode(result),
            message_id=dispatch_message_id(task.job_id, self.stage, task.dispatch),
        )

    def dead_letter(self, d: Delivery, dead: DeadLetter) -> list[Emit]:
        """Tell the orchestrator that the task failed for good."""
        try:
            task = task_decoder.decode(d.payload)
        except msgspec.DecodeError:
            log.error("stage_task_undecodable", entry=d.entry_id)
            return []
        error = ErrorInfo(code=dead.code, message=dead.message, retryable=False)
        attributes = {"montage.job_id": task.job_id, "montage.stage": self.stage, "montage.attempt": dead.attempts}
        with tracing.span(f"stage {self.stage} dead letter", parent=task.traceparent, attributes=attributes) as span:
            tracing.fail(span, dead.code, dead.message)
            result = StageResult(
                job_id=task.job_id,
                stage=self.stage,
                dispatch=task.dispatch,
                ok=False,
                error=error,
                attempts=dead.attempts,
                traceparent=tracing.traceparent(),
            )
        results = self.results_stream(task.job_id)
        return [Emit(results, encode(result), message_id=dispatch_message_id(task.job_id, self.stage, task.dispatch))]

    # --- callbacks for the stage ----------------------------------------------------
    def _progress(self, task: StageTask, alive: Liveness) -> Callable[[str], Awaitable[None]]:
        async def progress(text: str) -> None:
            alive.touch()
            msg = StageProgress(
                job_id=task.job_id,
                stage=self.stage,
                text=text,
                dispatch=task.dispatch,
                traceparent=tracing.traceparent(),
            )
            with contextlib.suppress(Exception):  # progress is best effort; the result is not
                await self.producer.emit([Emit(self.results_stream(task.job_id), encode(msg))])

        return progress

    def _preview(self, task: StageTask, alive: Liveness) -> Callable[[str, int, str, str | None], Awaitable[None]]:
        async def preview(kind: str, index: int, key: str, subject: str | None) -> None:
            alive.touch()
            target = layout.preview(task.job_id, kind, index, subject)
            content_type = "video/mp4" if kind == "clip" else "image/png"
            msg = StagePreview(
                job_id=task.job_id,
                stage=self.stage,
                kind=kind,
                index=index,
                key=target,
                subject=subject,
                dispatch=task.dispatch,
                traceparent=tracing.traceparent(),
            )
            try:  # best effort, as a progress text: the stage's own file is what the pipeline uses
                await self.storage.copy(key, target, content_type)
                await self.producer.emit([Emit(self.results_stream(task.job_id), encode(msg))])
            except Exception as exc:
                log.warning("preview_failed", kind=kind, index=index, error=str(exc)[:200])

        return preview

    def _cost(
        self, task: StageTask, costs: list[CostItem], alive: Liveness, budget: JobBudget
    ) -> Callable[[CostItem], Awaitable[None]]:
        async def cost(item: CostItem) -> None:
            alive.touch()
            costs.append(item)  # also carried by the final result: durable, deduped by call_id
            await budget.settle(item)  # its reservation becomes the real amount in the job's ledger
            msg = StageCost(
                job_id=task.job_id,
                stage=self.stage,
                cost=item,
                dispatch=task.dispatch,
                traceparent=tracing.traceparent(),
            )
            with contextlib.suppress(Exception):
                await self.producer.emit([Emit(self.results_stream(task.job_id), encode(msg))])

        return cost

    def _cancel_check(self, job_id: str) -> Callable[[], Awaitable[None]]:
        key = self.keys.job_cancel(job_id)

        async def check() -> None:
            if await self.redis.exists(key):
                raise JobCancelled("Job cancelled by user", job_id=job_id)

        return check

    # --- lifecycle ------------------------------------------------------------------
    async def heartbeat(self) -> None:
        """Announce this worker every ``HEARTBEAT_SECONDS`` until :meth:`stop` (its own stop signal:
        redis-py may swallow a cancel that lands mid-command)."""
        key = self.keys.worker_heartbeat(self.stage, self.consumer.consumer)
        while not self._stopping.is_set():
            self.beat_at = time.monotonic()  # the loop turned (a Redis outage must not fail liveness)
            with contextlib.suppress(Exception):
                await self.redis.set(key, str(time.time()), ex=HEARTBEAT_TTL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_SECONDS)

    def _watchdog(self) -> Watchdog:
        """The process's liveness (``/healthz``, ``montage_common.liveness``): the event loop, the
        heartbeat loop, every consumer's claim renewal and every running task's report must have
        turned within ``LIVENESS_BOUND_SECONDS``."""
        bound = self.settings.liveness_bound_seconds
        dog = Watchdog(bound)
        consumers = (*self.consumers, *self.clip_consumers)
        dog.watch("heartbeat", lambda: self.beat_at, bound)
        dog.watch("claim_renewal", lambda: min(c.renewed_at for c in consumers), bound)
        dog.watch("task_reports", lambda: min((r.beat_at for r in self._reports), default=None), bound)
        return dog

    async def run(self) -> None:
        provider, configured, setting = stage_provider(self.settings, self.stage)
        await self.providers.limits.announce(self.stage, provider, configured, setting)
        beat = asyncio.create_task(self.heartbeat(), name=f"heartbeat-{self.stage}")
        ticking = asyncio.create_task(self.watchdog.run(self._stopping), name="watchdog")
        try:
            await asyncio.gather(*(c.run() for c in (*self.consumers, *self.clip_consumers)))
        finally:
            self._stopping.set()
            _, stuck = await asyncio.wait([beat, ticking], timeout=5.0)  # bounded, then cancelled
            for t in stuck:
                t.cancel()
            with contextlib.suppress(Exception):
                await self.redis.delete(self.keys.worker_heartbeat(self.stage, self.consumer.consumer))
            with contextlib.suppress(Exception):
                await self.providers.aclose()

    def stop(self) -> None:
        self._stopping.set()
        for c in (*self.consumers, *self.clip_consumers):
            c.stop()
