"""The pipeline state machine: consumes the results stream and drives each job's stages.

Every message costs two statements, each its own transaction. First one read, without locks
(:func:`store.read_states`): whether the entry was handled already, the job, its stages, the
recorded costs among the message's and the stored outputs the next stage's input is built
from. Python decides (:mod:`decisions`, the stage inputs, the events, the next task) and sends
every write in one call (:func:`store.apply`, the SQL function ``orchestrator_apply``): with the
job row locked (``FOR UPDATE``, so several replicas are safe) it re-checks what the decision
read, then writes the costs, the stage row, the next stage's dispatch, the job row once and a
record of the handled entry with the emits it produced. If the job changed in between (a cancel,
a timeout, another replica), nothing is written and the message is read again. Results handled at
once (``RESULTS_CONCURRENCY`` per partition) share their reads and their writes: one statement
each per turn of the event loop (:mod:`batching`), the writes in one transaction. The emits (next
``StageTask`` and SSE events) are returned to the :class:`StreamConsumer`, which writes them
atomically with the ack. A redelivery of an entry whose write already committed re-sends the
recorded emits instead of redoing the work. Stale results (another dispatch, a job already final)
are acked and ignored.

Within one replica a per-job lock, taken in delivery order, keeps a job's messages in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Literal

import asyncpg
import msgspec
import structlog
from montage_common import db, tracing
from montage_common.storage import layout
from montage_contracts.api import (
    CompletedData,
    CostUpdateData,
    MessageData,
    PreviewData,
    PreviewKind,
    ProgressData,
    StageUpdateData,
)
from montage_contracts.errors import ErrorCode, RetryableError
from montage_contracts.messages import (
    ErrorInfo,
    ResultMessage,
    StageCost,
    StagePreview,
    StageProgress,
    StageResult,
    StageTask,
    dispatch_message_id,
    encode,
    result_decoder,
)
from montage_contracts.models import AudioAnalysis, CostItem, StageInput, VideoOutput
from montage_contracts.pipeline import FINAL_STATUSES, JobFacts, JobStatus, StageStatus, StageUpdate, spec
from montage_streams import Delivery, Emit

from montage_orchestrator import assets, costs, decisions, job_metrics, metrics, stages, store
from montage_orchestrator.batching import Coalescer
from montage_orchestrator.deps import Deps
from montage_orchestrator.jobs import RATES, estimated_remaining
from montage_orchestrator.outbox import pack, unpack
from montage_orchestrator.transitions import BUDGET_MESSAGE, Effects, after_commit, begin, fail_job, job_failed

log = structlog.get_logger()

_out = msgspec.json.Encoder(decimal_format="number")

# A result whose job changed between its read and its write is read again, at most this often.
CONFLICT_ATTEMPTS = 5


def decode_result(payload: bytes) -> ResultMessage:
    msg: ResultMessage = result_decoder.decode(payload)
    return msg


def stage_task_emit(deps: Deps, task: StageTask) -> Emit:
    """The task on its stage's stream in the job's partition; message id ``<job>:<stage>:<dispatch>``."""
    stream = deps.keys.stage_stream(task.stage, deps.keys.partition_of(task.job_id))
    return Emit(stream, encode(task), message_id=dispatch_message_id(task.job_id, task.stage, task.dispatch))


def queue_stage(  # noqa: PLR0917
    deps: Deps, eff: Effects, stage: str, stage_input: StageInput, user_id: str, limit: Decimal, dispatch: int
) -> None:
    """The stage's task (written with the hand-off) and its ``started`` events, for every way a
    stage starts: an upload, a result applied in one statement, and :func:`dispatch_stage`."""
    task = StageTask(
        job_id=eff.job_id,
        user_id=user_id,
        stage=stage,
        input=stage_input,
        budget_remaining=str(limit - eff.total),
        cost_limit=str(limit),
        dispatch=dispatch,
        traceparent=tracing.traceparent(),  # the worker's span continues the caller's (the job's trace)
    )
    eff.emits.append(stage_task_emit(deps, task))
    eff.event(deps, StageUpdateData(stage=stage, status=StageUpdate.STARTED))
    eff.event(deps, MessageData(text=spec(stage).started_message, stage=stage))


async def dispatch_stage(conn: asyncpg.Connection, deps: Deps, job: asyncpg.Record, stage: str, eff: Effects) -> bool:
    """Start ``stage`` inside the caller's transaction, the job row locked (the reconciler, the
    operator console; budget check first for the expensive ones); False when the job failed instead."""
    job_id = job["job_id"]
    limit: Decimal = job["cost_limit"]
    eff.total = max(eff.total, job["total_cost"])  # what is spent: the budget check and the task's seed
    planned = costs.estimate_stage(deps.settings, stage, job["audio_duration"] or 0.0)
    if not decisions.budget_allows(stage, eff.total, planned, limit):
        log.info("budget_precheck_failed", job_id=str(job_id), stage=stage, total=str(eff.total))
        await fail_job(conn, deps, eff, ErrorCode.BUDGET_EXCEEDED, BUDGET_MESSAGE)
        return False
    stored = await store.stage_outputs(conn, job_id, stages.INPUT_SOURCES[stage])
    stage_input = stages.build_input(
        stage, JobFacts(audio_key=job["audio_key"], user_prompt=job["user_prompt"]), stored
    )
    dispatch = await store.start_stage(conn, job_id, stage)
    eff.row = await store.update_job(conn, job_id, current_stage=stage)
    # In the job's own trace (its row's traceparent), whoever dispatches: its turn given while
    # another job's result is applied, the reconciler, the operator console.
    attributes = {"montage.job_id": str(job_id), "montage.stage": stage, "montage.dispatch": dispatch}
    with tracing.span(f"dispatch {stage}", parent=job.get("traceparent"), attributes=attributes):
        queue_stage(deps, eff, stage, stage_input, job["user_id"], limit, dispatch)
    return True


def _stale(state: store.JobState, msg: ResultMessage) -> bool:
    """The job is gone or final, or the stage is no longer running under this result's dispatch."""
    if not state.found or state.status in FINAL_STATUSES:
        return True
    row = state.stages.get(msg.stage)
    return row is None or row.status != StageStatus.RUNNING or row.dispatch != msg.dispatch


def _outputs_to_read(msg: ResultMessage, judged: decisions.Judged | None) -> tuple[str, ...]:
    """The stored outputs a result may need: those the next stage's input is built from (except
    the result's own, when it has one) and, for a failed stage, the song's analysis (fallback plan)."""
    if not isinstance(msg, StageResult) or judged is None:
        return ()
    following = decisions.after_success(msg.stage)
    names = set(stages.INPUT_SOURCES[following.name]) if following is not None else set()
    if judged.error is not None:
        names.add("audio_parser")
    elif judged.output is not None:
        names.discard(msg.stage)
    return tuple(sorted(names))


class Pipeline:
    """The results-stream handler (see the module docstring)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # The reads and the writes of results handled at once, one statement per turn (``batching``).
        self._read: Coalescer[store.Read, store.JobState] = Coalescer(self._read_batch, alone=self._read_one)
        self._write: Coalescer[store.Change, store.Applied] = Coalescer(self._write_batch, alone=self._write_one)

    async def _read_batch(self, reads: list[store.Read]) -> list[store.JobState]:
        return await store.read_states(self.deps.pool, reads)

    async def _read_one(self, read: store.Read) -> store.JobState:
        return (await store.read_states(self.deps.pool, [read]))[0]

    async def _write_batch(self, changes: list[store.Change]) -> list[store.Applied]:
        return await store.apply(self.deps.pool, changes)

    async def _write_one(self, change: store.Change) -> store.Applied:
        return (await store.apply(self.deps.pool, [change]))[0]

    @asynccontextmanager
    async def _job_lock(self, job_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(job_id, (asyncio.Lock(), 0))
        self._locks[job_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[job_id]
            if users <= 1:
                del self._locks[job_id]
            else:
                self._locks[job_id] = (lock, users - 1)

    async def handle(self, d: Delivery) -> list[Emit]:
        try:
            msg = decode_result(d.payload)
        except msgspec.DecodeError as exc:
            log.error("result_undecodable", entry=d.entry_id, error=str(exc)[:200])
            return []
        job_uuid = store.as_uuid(msg.job_id)
        if job_uuid is None:
            log.warning("result_bad_job_id", entry=d.entry_id)
            return []
        attributes = {"montage.job_id": msg.job_id, "montage.stage": msg.stage, "montage.dispatch": msg.dispatch}
        attributes["montage.message"] = type(msg).__name__
        attributes["montage.attempt"] = msg.attempts if isinstance(msg, StageResult) else d.attempt
        # A child of the worker's span that wrote the message; the next task continues from here.
        name = f"apply {type(msg).__name__} {msg.stage}"
        with tracing.span(name, parent=msg.traceparent, kind=tracing.SpanKind.CONSUMER, attributes=attributes):
            async with self._job_lock(msg.job_id):
                with structlog.contextvars.bound_contextvars(job_id=msg.job_id, stage=msg.stage):
                    try:
                        return await db.retrying(lambda: self._apply(d, msg, job_uuid))
                    except (asyncpg.PostgresError, *db.TRANSIENT) as exc:
                        raise RetryableError(f"database: {type(exc).__name__}: {exc}"[:300]) from None

    async def _apply(self, d: Delivery, msg: ResultMessage, job_id: uuid.UUID) -> list[Emit]:
        """Read the job (one statement, no lock), decide, write everything (one statement, which
        re-checks under the job's lock what the decision read); again from the read on a conflict."""
        entry_key = f"{d.stream}/{d.entry_id}"
        judged = None
        if isinstance(msg, StageResult):
            judged = decisions.judge_result(msg.stage, msg.ok, bytes(msg.output) if msg.ok else b"", msg.error)
        outputs_of = _outputs_to_read(msg, judged)
        call_ids = [c.call_id for c in msg.costs] if isinstance(msg, StageResult) else []
        if isinstance(msg, StageCost):
            call_ids = [msg.cost.call_id]
        read = store.Read(entry_key, job_id, outputs_of, tuple(call_ids))
        for _ in range(CONFLICT_ATTEMPTS):
            await RATES.refresh(self.deps.pool)
            state = await self._read(read)
            if state.handled is not None:
                log.info("result_redelivered", entry=d.entry_id)
                return unpack(state.handled)
            if _stale(state, msg):
                log.info("result_stale", kind=type(msg).__name__, dispatch=msg.dispatch)
                return []
            assert state.status is not None  # found (not stale)
            eff = Effects(job_id=str(job_id), total=state.total_cost)
            change = store.Change(
                entry_key,
                job_id,
                msg.stage,
                msg.dispatch,
                state.status,
                state.total_cost,
                record=not isinstance(msg, StageProgress | StagePreview),
            )
            if state.status == JobStatus.QUEUED:
                change.status, change.started = JobStatus.PROCESSING, True
            match msg:
                case StageProgress():
                    eff.event(self.deps, MessageData(text=msg.text, stage=msg.stage))
                    if change.status is None:  # nothing to write
                        return eff.emits
                case StagePreview():
                    if not await self._preview(job_id, msg, eff):
                        return []
                    if change.status is None:
                        return eff.emits
                case StageCost():
                    self._cost(state, change, msg.cost, eff)
                case StageResult():
                    assert judged is not None
                    await self._result(state, change, msg, judged, eff)
            change.emits = pack(eff.emits) if change.record else b"[]"
            await begin(self.deps, eff)
            applied = await self._write(change)
            if applied.outcome == "ok":
                eff.row = applied.job
                await after_commit(self.deps, eff)
                return eff.emits
            if applied.outcome == "handled":
                log.info("result_redelivered", entry=d.entry_id)
                return unpack(applied.emits or b"[]")
            if applied.outcome == "stale":
                log.info("result_stale", kind=type(msg).__name__, dispatch=msg.dispatch)
                return []
            log.info("result_conflict", kind=type(msg).__name__)  # the job changed since the read
        raise RetryableError(f"the job kept changing while its result was applied ({CONFLICT_ATTEMPTS} reads)")

    async def _preview(self, job_id: uuid.UUID, msg: StagePreview, eff: Effects) -> bool:
        """List a stored still or clip (``assets``) and send its ``preview`` event; False for a
        report that names no preview of this job."""
        if msg.kind not in ("still", "clip") or not msg.key.startswith(layout.preview_prefix(str(job_id))):
            log.warning("preview_refused", kind=msg.kind, key=msg.key[:200])
            return False
        kind: PreviewKind = "still" if msg.kind == "still" else "clip"
        subject: Literal["scene", "character"] | None = None
        if kind == "still":
            subject = "character" if msg.subject == "character" else "scene"
        await assets.record(self.deps.pool, job_id, kind, msg.index, msg.key, subject)
        url = await self.deps.storage.signed_url(msg.key, self.deps.settings.download_url_seconds)
        eff.event(self.deps, PreviewData(kind=kind, index=msg.index, url=url, subject=subject))
        return True

    # --- costs ----------------------------------------------------------------------
    def _cost(self, state: store.JobState, change: store.Change, item: CostItem, eff: Effects) -> bool:
        """Record one cost; False when it would pass the cap (the job then fails)."""
        stage = change.stage
        if item.call_id in state.recorded_calls or any(c.call_id == item.call_id for c in change.costs):
            return True
        if not costs.within(eff.total, item.amount, state.cost_limit):
            change.stage_meta = {"budget_rejected_call": item.call_id, "budget_rejected_amount": str(item.amount)}
            log.warning("budget_exceeded", amount=str(item.amount), total=str(eff.total), api=item.api_name)
            self._fail(change, eff, ErrorCode.BUDGET_EXCEEDED, BUDGET_MESSAGE)
            return False
        change.costs.append(item)
        eff.total += item.amount
        change.total = eff.total
        amount = float(item.amount)
        eff.committed.append(lambda: metrics.COST_DOLLARS.labels(stage).inc(amount))
        eff.event(self.deps, CostUpdateData(stage=stage, cost=amount, total=float(eff.total)))
        return True

    def _fail(self, change: store.Change, eff: Effects, code: ErrorCode, message: str) -> None:
        """The job fails (as :func:`~montage_orchestrator.transitions.fail_job`, in ``change``)."""
        change.fail_running = message
        change.status, change.error_message, change.error_code = JobStatus.FAILED, message, code
        change.completed = True
        change.expire_after = timedelta(days=self.deps.settings.failed_retention_days)
        job_failed(self.deps, eff, code, message)
        tracing.fail(tracing.current(), code, message)

    # --- results --------------------------------------------------------------------
    async def _result(
        self, state: store.JobState, change: store.Change, msg: StageResult, judged: decisions.Judged, eff: Effects
    ) -> None:
        for item in msg.costs:
            if not self._cost(state, change, item, eff):
                return
        if judged.error is None:
            await self._stage_done(state, change, msg, judged.output, eff, {})
            return
        await self._stage_failed(state, change, msg, judged.error, eff)

    async def _stage_done(  # noqa: PLR0917
        self,
        state: store.JobState,
        change: store.Change,
        msg: StageResult,
        output: msgspec.Struct | None,
        eff: Effects,
        metadata: dict[str, object],
        *,
        status: StageStatus = StageStatus.COMPLETED,
        error: str | None = None,
    ) -> None:
        stage = msg.stage
        # The worker's own time on it (what the door's forecast multiplies by the queue it
        # simulates); dispatch-to-result would count the time queued in the stream twice.
        duration = msg.duration_seconds if msg.duration_seconds > 0 else state.stages[stage].elapsed
        change.finish, change.attempts, change.stage_error, change.duration = status, msg.attempts, error, duration
        change.output = None if output is None else _out.encode(output).decode()
        change.stage_meta = metadata or None
        eff.committed.append(lambda: metrics.STAGE_DURATION.labels(stage, status).observe(duration))
        progress = spec(stage).progress
        change.progress = progress
        eff.event(self.deps, StageUpdateData(stage=stage, status=StageUpdate.COMPLETED, duration=round(duration, 3)))
        remaining = estimated_remaining(JobStatus.PROCESSING, stage, state.audio_duration, finished=True)
        eff.event(self.deps, ProgressData(progress=progress, estimated_remaining=remaining))
        following = decisions.after_success(stage)
        if following is None:
            assert isinstance(output, VideoOutput)
            await self._complete(change, output, eff)
            return
        self._dispatch(state, change, following.name, eff, {} if output is None else {stage: output})

    def _dispatch(
        self, state: store.JobState, change: store.Change, stage: str, eff: Effects, known: dict[str, msgspec.Struct]
    ) -> None:
        """Start ``stage`` (budget check first for the expensive ones), or fail the job."""
        planned = costs.estimate_stage(self.deps.settings, stage, state.audio_duration or 0.0)
        if not decisions.budget_allows(stage, eff.total, planned, state.cost_limit):
            log.info("budget_precheck_failed", stage=stage, total=str(eff.total))
            self._fail(change, eff, ErrorCode.BUDGET_EXCEEDED, BUDGET_MESSAGE)
            return
        facts = JobFacts(audio_key=state.audio_key, user_prompt=state.user_prompt)
        stage_input = stages.build_input(stage, facts, state.outputs, known)
        prior = state.stages.get(stage)
        dispatch = (prior.dispatch if prior is not None else 0) + 1
        change.next_stage, change.next_dispatch, change.current_stage = stage, dispatch, stage
        queue_stage(self.deps, eff, stage, stage_input, state.user_id, state.cost_limit, dispatch)

    async def _stage_failed(
        self, state: store.JobState, change: store.Change, msg: StageResult, err: ErrorInfo, eff: Effects
    ) -> None:
        stage = msg.stage
        decision = decisions.on_failure(stage, err)
        log.info("stage_failed", code=err.code, error=err.message[:200], decision=type(decision).__name__)
        if isinstance(decision, decisions.FailJob):
            change.finish, change.attempts, change.stage_error = StageStatus.FAILED, msg.attempts, err.message
            change.duration = state.stages[stage].elapsed
            self._fail(change, eff, decision.code, decision.message)
            return
        eff.event(self.deps, MessageData(text=decision.message, stage=stage))
        meta = {"fallback_mode": True, "fallback_reason": decision.reason}
        if decision.policy == "continue_text_only":
            await self._stage_done(state, change, msg, None, eff, meta, status=StageStatus.FAILED, error=err.message)
            return
        audio = msgspec.json.decode(state.outputs["audio_parser"] or b"null", type=AudioAnalysis)
        plan = stages.fallback_plan(state.user_prompt, audio)
        await self._stage_done(state, change, msg, plan, eff, meta)

    async def _complete(self, change: store.Change, output: VideoOutput, eff: Effects) -> None:
        change.status, change.progress, change.video_key, change.completed = JobStatus.COMPLETED, 100, output.key, True
        change.expire_after = timedelta(days=self.deps.settings.video_retention_days)
        url = await self.deps.storage.signed_url(output.key, self.deps.settings.download_url_seconds)
        poster = None
        if output.poster_key is not None:  # listed before the job completes: its status then has it
            await assets.record(self.deps.pool, uuid.UUID(eff.job_id), "poster", 0, output.poster_key, None)
            poster = await self.deps.storage.signed_url(output.poster_key, self.deps.settings.download_url_seconds)
        eff.event(self.deps, CompletedData(video_url=url, total_cost=float(eff.total), poster_url=poster))
        eff.delete_prefixes = layout.intermediate_prefixes(eff.job_id)
        total = eff.total

        def note() -> None:
            metrics.JOBS_COMPLETED.inc()
            job_metrics.finished(eff.row, "completed")
            log.info("job_completed", total_cost=str(total))

        eff.committed.append(note)
