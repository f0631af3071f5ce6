"""The pipeline state machine: consumes the results stream and drives each job's stages.

For every message, in ONE Postgres transaction with the job row locked (``FOR UPDATE``, so
several replicas are safe): costs (``ON CONFLICT (job_id, call_id) DO NOTHING``), the stage
row, the job row, the next stage's dispatch, and a record of the handled entry with the emits
it produced. The emits (next ``StageTask`` and SSE events) are returned to the
:class:`StreamConsumer`, which writes them atomically with the ack. A redelivery of an entry
whose transaction already committed re-sends the recorded emits instead of redoing the work.
Stale results (another dispatch, a job already final) are acked and ignored.

Within one replica a per-job lock, taken in delivery order, keeps a job's messages in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal

import asyncpg
import msgspec
import structlog
from montage_common import db
from montage_common.errors import ErrorCode, RetryableError
from montage_common.messages import (
    ErrorInfo,
    StageCost,
    StageProgress,
    StageResult,
    StageTask,
    dispatch_message_id,
    encode,
    result_decoder,
)
from montage_common.models import AudioAnalysis, CostItem, VideoOutput
from montage_common.pipeline import FINAL_STATUSES, spec
from montage_common.storage import layout
from montage_streams import Delivery, Emit

from montage_orchestrator import costs, decisions, metrics, stages, store
from montage_orchestrator.deps import Deps
from montage_orchestrator.jobs import RATES, STARTED_MESSAGES, estimated_remaining
from montage_orchestrator.outbox import pack, unpack
from montage_orchestrator.transitions import BUDGET_MESSAGE, Effects, after_commit, begin, fail_job

log = structlog.get_logger()

_out = msgspec.json.Encoder(decimal_format="number")


def decode_result(payload: bytes) -> StageResult | StageProgress | StageCost:
    msg: StageResult | StageProgress | StageCost = result_decoder.decode(payload)
    return msg


def stage_task_emit(deps: Deps, task: StageTask) -> Emit:
    """The task on its stage's stream in the job's partition; message id ``<job>:<stage>:<dispatch>``."""
    stream = deps.keys.stage_stream(task.stage, deps.keys.partition_of(task.job_id))
    return Emit(stream, encode(task), message_id=dispatch_message_id(task.job_id, task.stage, task.dispatch))


async def dispatch_stage(conn: asyncpg.Connection, deps: Deps, job: asyncpg.Record, stage: str, eff: Effects) -> bool:
    """Start ``stage`` (budget check first for the expensive ones); False when the job failed instead."""
    job_id = job["job_id"]
    limit: Decimal = job["cost_limit"]
    if not decisions.budget_allows(stage, eff.total, job["estimated_cost"], limit):
        log.info("budget_precheck_failed", job_id=str(job_id), stage=stage, total=str(eff.total))
        await fail_job(conn, deps, eff, ErrorCode.BUDGET_EXCEEDED, BUDGET_MESSAGE)
        return False
    rows = await store.stage_outputs(conn, job_id)
    stage_input = stages.build_input(stage, job, rows)
    dispatch = await store.start_stage(conn, job_id, stage)
    eff.row = await store.update_job(conn, job_id, current_stage=stage)
    task = StageTask(
        job_id=str(job_id),
        user_id=job["user_id"],
        stage=stage,
        input=stage_input,
        budget_remaining=str(limit - eff.total),
        dispatch=dispatch,
    )
    eff.emits.append(stage_task_emit(deps, task))
    eff.event(deps, "stage_update", {"stage": stage, "status": "started"})
    eff.event(deps, "message", {"text": STARTED_MESSAGES[stage], "stage": stage})
    return True


class Pipeline:
    """The results-stream handler (see the module docstring)."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

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
        async with self._job_lock(msg.job_id):
            with structlog.contextvars.bound_contextvars(job_id=msg.job_id, stage=msg.stage):
                try:
                    return await db.retrying(lambda: self._apply(d, msg, job_uuid))
                except (asyncpg.PostgresError, *db.TRANSIENT) as exc:
                    raise RetryableError(f"database: {type(exc).__name__}: {exc}"[:300]) from None

    async def _apply(self, d: Delivery, msg: StageResult | StageProgress | StageCost, job_id: uuid.UUID) -> list[Emit]:
        entry_key = f"{d.stream}/{d.entry_id}"
        eff = Effects(job_id=str(job_id))
        async with self.deps.pool.acquire() as conn, conn.transaction():
            recorded = await store.handled_emits(conn, entry_key)
            if recorded is not None:
                log.info("result_redelivered", entry=d.entry_id)
                return unpack(recorded)
            job = await store.lock_job(conn, job_id)
            stage_row = await store.get_stage(conn, job_id, msg.stage)
            if (
                job is None
                or job["status"] in FINAL_STATUSES
                or stage_row is None
                or stage_row["status"] != "running"
                or stage_row["dispatch"] != msg.dispatch
            ):
                log.info("result_stale", kind=type(msg).__name__, dispatch=msg.dispatch)
                return []
            eff.total = job["total_cost"]
            await begin(self.deps, eff)
            if job["status"] == "queued":
                now = await conn.fetchval("SELECT now()")
                job = await store.update_job(conn, job_id, status="processing", started_at=now)
            eff.row = job
            match msg:
                case StageProgress():
                    eff.event(self.deps, "message", {"text": msg.text, "stage": msg.stage})
                case StageCost():
                    await self._cost(conn, job, msg.stage, msg.cost, eff)
                case StageResult():
                    await self._result(conn, job, msg, eff)
            if not isinstance(msg, StageProgress):
                await store.record_handled(conn, entry_key, job_id, pack(eff.emits))
        await after_commit(self.deps, eff)
        return eff.emits

    # --- costs ----------------------------------------------------------------------
    async def _cost(
        self, conn: asyncpg.Connection, job: asyncpg.Record, stage: str, item: CostItem, eff: Effects
    ) -> bool:
        """Record one cost; False when it would pass the cap (the job then failed)."""
        job_id = job["job_id"]
        if await store.cost_recorded(conn, job_id, item.call_id):
            return True
        if not costs.within(eff.total, item.amount, job["cost_limit"]):
            await store.patch_stage_metadata(
                conn, job_id, stage, {"budget_rejected_call": item.call_id, "budget_rejected_amount": str(item.amount)}
            )
            log.warning("budget_exceeded", amount=str(item.amount), total=str(eff.total), api=item.api_name)
            await fail_job(conn, self.deps, eff, ErrorCode.BUDGET_EXCEEDED, BUDGET_MESSAGE)
            return False
        await store.insert_cost(conn, job_id, stage, item)
        eff.total += item.amount
        eff.row = await store.update_job(conn, job_id, total_cost=eff.total)
        metrics.COST_DOLLARS.labels(stage).inc(float(item.amount))
        eff.event(self.deps, "cost_update", {"stage": stage, "cost": item.amount, "total": eff.total})
        return True

    # --- results --------------------------------------------------------------------
    async def _result(self, conn: asyncpg.Connection, job: asyncpg.Record, msg: StageResult, eff: Effects) -> None:
        for item in msg.costs:
            if not await self._cost(conn, job, msg.stage, item, eff):
                return
        judged = decisions.judge_result(msg.stage, msg.ok, bytes(msg.output) if msg.ok else b"", msg.error)
        if judged.error is None:
            await self._stage_done(conn, job, msg, judged.output, eff, {})
            return
        await self._stage_failed(conn, job, msg, judged.error, eff)

    async def _stage_done(  # noqa: PLR0917
        self,
        conn: asyncpg.Connection,
        job: asyncpg.Record,
        msg: StageResult,
        output: msgspec.Struct | None,
        eff: Effects,
        metadata: dict[str, object],
        *,
        status: str = "completed",
        error: str | None = None,
    ) -> None:
        stage, job_id = msg.stage, job["job_id"]
        duration = await store.finish_stage(
            conn,
            job_id,
            stage,
            status=status,
            attempts=msg.attempts,
            output=None if output is None else _out.encode(output).decode(),
            metadata=metadata,
            error=error,
        )
        metrics.STAGE_DURATION.labels(stage, status).observe(duration)
        progress = spec(stage).progress
        eff.row = await store.update_job(conn, job_id, progress=progress)
        eff.event(self.deps, "stage_update", {"stage": stage, "status": "completed", "duration": round(duration, 3)})
        await RATES.refresh(conn)
        remaining = estimated_remaining("processing", stage, job["audio_duration"], finished=True)
        eff.event(self.deps, "progress", {"progress": progress, "estimated_remaining": remaining})
        following = decisions.after_success(stage)
        if following is None:
            assert isinstance(output, VideoOutput)
            await self._complete(conn, job, output, eff)
            return
        await dispatch_stage(conn, self.deps, job, following.name, eff)

    async def _stage_failed(
        self, conn: asyncpg.Connection, job: asyncpg.Record, msg: StageResult, err: ErrorInfo, eff: Effects
    ) -> None:
        stage = msg.stage
        decision = decisions.on_failure(stage, err)
        log.info("stage_failed", code=err.code, error=err.message[:200], decision=type(decision).__name__)
        if isinstance(decision, decisions.FailJob):
            await store.finish_stage(
                conn, job["job_id"], stage, status="failed", attempts=msg.attempts, error=err.message
            )
            await fail_job(conn, self.deps, eff, decision.code, decision.message)
            return
        eff.event(self.deps, "message", {"text": decision.message, "stage": stage})
        meta = {"fallback_mode": True, "fallback_reason": decision.reason}
        if decision.policy == "continue_text_only":
            await self._stage_done(conn, job, msg, None, eff, meta, status="failed", error=err.message)
            return
        rows = await store.stage_outputs(conn, job["job_id"])
        audio = msgspec.json.decode(rows["audio_parser"]["output"], type=AudioAnalysis)
        plan = stages.fallback_plan(job["user_prompt"], audio)
        await self._stage_done(conn, job, msg, plan, eff, meta)

    async def _complete(self, conn: asyncpg.Connection, job: asyncpg.Record, output: VideoOutput, eff: Effects) -> None:
        job_id = job["job_id"]
        now = await conn.fetchval("SELECT now()")
        eff.row = await store.update_job(
            conn,
            job_id,
            status="completed",
            progress=100,
            video_key=output.key,
            completed_at=now,
            files_expire_at=now + timedelta(days=self.deps.settings.video_retention_days),
        )
        url = await self.deps.storage.signed_url(output.key, self.deps.settings.download_url_seconds)
        eff.event(self.deps, "completed", {"video_url": url, "total_cost": eff.total})
        eff.delete_prefixes = layout.intermediate_prefixes(str(job_id))
        metrics.JOBS_COMPLETED.inc()
        log.info("job_completed", total_cost=str(eff.total))
