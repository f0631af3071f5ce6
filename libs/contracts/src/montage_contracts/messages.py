"""Wire messages carried on Redis Streams: tagged, frozen Structs, one union per stream.

- ``stage:<name>`` streams carry :class:`StageTask`.
- the ``results`` stream carries :data:`ResultMessage` (result, progress text, cost, preview).
- per-job event logs carry the events of :mod:`montage_contracts.events`.
- the RAGNAROK events stream carries :class:`RagnarokJobFinished`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from montage_contracts.models import CostItem, StageInput


class Wire(msgspec.Struct, frozen=True, kw_only=True):
    """A pipeline message. ``traceparent``: the W3C trace context of the span that wrote it (the
    orchestrator's for a task, the worker's for a result, progress or cost), so the reader's span
    continues the job's one trace (``montage_common.tracing``). Left out of the bytes when
    tracing is off (``UNSET``), so an untraced message is what it was before."""

    traceparent: str | msgspec.UnsetType = msgspec.UNSET


# --- idempotency keys: built here only -------------------------------------------------
def dispatch_message_id(job_id: str, stage: str, dispatch: int) -> str:
    """The message id of a stage's task and of its result: one per dispatch, so a redelivered
    entry (or a re-sent outbox entry) is recognised, and a superseded dispatch is told apart."""
    return f"{job_id}:{stage}:{dispatch}"


def call_id(job_id: str, stage: str, what: str) -> str:
    """The id of one logical call (``job_costs`` is unique on it, so its cost is recorded once; a
    billed provider request adds its own id, :func:`request_call_id`): the same job, stage and
    ``what`` (e.g. ``clip_3``) give the same id."""
    return f"{job_id}:{stage}:{what}"


def request_call_id(call: str, request_id: str) -> str:
    """The id of one billed provider request of the call ``call`` (``call_id(...)``): the provider's
    own id of the request (a Runway task id) after ``@``. A stage retried after the provider billed
    a request makes a new request with a new id, so ``job_costs`` gets a row per billed request,
    and the same request reported twice is recorded once. ``job_costs.request_id`` is the part
    after ``@``."""
    return f"{call}@{request_id}"


def clip_message_id(job_id: str, sig: str) -> str:
    """The message id of one clip entry of video_generator's fan-out (``sig``: the hash of what
    decides its frames), so the same clip asked for twice is one entry; its record's is
    :func:`clip_record_message_id`."""
    return f"{job_id}:clip:{sig}"


def clip_record_message_id(entry_message_id: str) -> str:
    """The message id of the record a clip worker writes for the clip entry ``entry_message_id``."""
    return f"{entry_message_id}:done"


# --- a running stage's liveness (``keys.stage_alive``): written by its worker, read by the reconciler ---
class StageAlive(msgspec.Struct, frozen=True):
    """What a worker running a stage reports every heartbeat: which dispatch it runs, and when it
    last made progress (started, a progress text, a cost: unix ms), so a live worker on a stage
    that no longer moves is told apart from one that works."""

    dispatch: int
    progress_ms: int = 0  # 0: not reported (a worker of an older release)

    def value(self) -> str:
        return f"{self.dispatch} {self.progress_ms}"

    @classmethod
    def parse(cls, raw: bytes | str | None) -> StageAlive | None:
        """The value read back; ``None`` when missing or unreadable."""
        if raw is None:
            return None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        parts = text.split()
        try:
            return cls(int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
        except (IndexError, ValueError):
            return None


class ErrorInfo(Wire, frozen=True, kw_only=True):
    code: str
    message: str
    retryable: bool = False


class StageTask(Wire, tag="task", frozen=True, kw_only=True):
    job_id: str
    user_id: str
    stage: str
    input: StageInput
    budget_remaining: str = "0"  # Decimal as text: what the stage may still spend
    cost_limit: str = ""  # Decimal as text: the job's cap (seeds the budget ledger; empty: unknown)
    dispatch: int = 1  # the orchestrator's dispatch number for this stage (dedupe key)


class StageResult(Wire, tag="result", frozen=True, kw_only=True):
    job_id: str
    stage: str
    dispatch: int = 1
    ok: bool
    output: msgspec.Raw = msgspec.Raw(b"null")  # JSON of the stage's output Struct (null on failure)
    error: ErrorInfo | None = None
    duration_seconds: float = 0.0
    costs: list[CostItem] = []
    attempts: int = 1


class StageProgress(Wire, tag="progress", frozen=True, kw_only=True):
    job_id: str
    stage: str
    text: str
    dispatch: int = 1


class StageCost(Wire, tag="cost", frozen=True, kw_only=True):
    """A cost reported while a stage is still running (budget checked on each)."""

    job_id: str
    stage: str
    cost: CostItem
    dispatch: int = 1


class StagePreview(Wire, tag="preview", frozen=True, kw_only=True):
    """A reference still or a clip was stored and copied to its preview key (``layout.preview``):
    the orchestrator lists it (``job_assets``) and sends a ``preview`` event with a signed URL.
    Best effort, as a progress text; the same preview sent twice is listed once."""

    job_id: str
    stage: str
    kind: str  # "still" | "clip"
    index: int
    key: str  # the preview's storage key
    subject: str | None = None  # a still's "scene" | "character"
    dispatch: int = 1


ResultMessage = StageResult | StageProgress | StageCost | StagePreview


class RagnarokJobFinished(msgspec.Struct, tag="ragnarok_job_finished", tag_field="type", frozen=True, kw_only=True):
    """A RAGNAROK workflow reached a final state (``keys.ragnarok_events_stream()``, field ``data``).

    Delivered at least once: consumers dedupe on ``job_id``.
    """

    job_id: str
    user_id: str
    workflow_id: str
    status: str
    video_url: str | None = None
    cost_usd: Decimal | None = None
    quality_score: float | None = None
    error: str | None = None
    trace_id: str = ""
    finished_at: datetime | None = None


task_encoder = msgspec.json.Encoder(decimal_format="number")
task_decoder = msgspec.json.Decoder(StageTask)
result_decoder = msgspec.json.Decoder(ResultMessage)
ragnarok_event_decoder = msgspec.json.Decoder(RagnarokJobFinished)


def encode(msg: msgspec.Struct) -> bytes:
    return task_encoder.encode(msg)
