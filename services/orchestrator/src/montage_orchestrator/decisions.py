"""The orchestrator's decisions as pure functions: no I/O, tested without Postgres or Redis.

:mod:`montage_orchestrator.pipeline` applies them inside its transaction:

- :func:`judge_result`: what a stage's result means (its decoded output, or why it failed,
  including the clip minimum of ``video_generator``);
- :func:`on_failure`: what a failed stage does to the job (continue text-only, fall back to a
  simple plan, or fail the job with which code and message), after the StageSpec's policy;
- :func:`budget_allows`: whether a stage may start with what is left of the job's cap;
- :func:`after_success`: the next stage, or the end of the pipeline;
- :func:`on_stuck`: what the reconciler does with a stage that makes no progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

import msgspec
from montage_contracts.errors import JOB_FAILURE_CODES, ErrorCode
from montage_contracts.messages import ErrorInfo
from montage_contracts.models import Clips
from montage_contracts.pipeline import StageSpec, next_stage, spec

from montage_orchestrator import costs

# A stage that failed this way takes no fallback: the job itself must stop.
NO_FALLBACK_CODES = frozenset({ErrorCode.BUDGET_EXCEEDED, ErrorCode.CANCELLED})

FALLBACK_MESSAGES = {
    "continue_text_only": "Reference images unavailable, continuing with text-only prompts",
    "fallback_plan": "Scene planning failed, using a simple plan",
}


@dataclass(frozen=True, slots=True)
class Judged:
    """A result judged: exactly one of ``output`` and ``error`` is set."""

    output: msgspec.Struct | None
    error: ErrorInfo | None


@dataclass(frozen=True, slots=True)
class Recover:
    """The stage failed but the job goes on (``policy``: how)."""

    policy: Literal["continue_text_only", "fallback_plan"]
    message: str  # the SSE ``message`` event's text
    reason: str  # recorded as the stage's fallback reason


@dataclass(frozen=True, slots=True)
class FailJob:
    code: ErrorCode
    message: str


def judge_result(stage_name: str, ok: bool, output: bytes, error: ErrorInfo | None) -> Judged:
    """Decode a successful stage's output into its spec's type; anything wrong is a failure."""
    stage = spec(stage_name)
    if ok:
        try:
            decoded = msgspec.json.decode(output, type=stage.output_type)
        except msgspec.DecodeError as exc:
            return Judged(None, ErrorInfo(code=ErrorCode.MODULE_FAILURE, message=f"invalid output: {exc}"[:300]))
        if stage.min_clips:
            assert isinstance(decoded, Clips)
            if len(decoded.clips) < stage.min_clips:
                total = len(decoded.clips) + len(decoded.failed)
                message = f"Insufficient clips generated ({len(decoded.clips)} of {total})"
                return Judged(None, ErrorInfo(code=ErrorCode.MODULE_FAILURE, message=message))
        return Judged(decoded, None)
    return Judged(None, error or ErrorInfo(code=ErrorCode.MODULE_FAILURE, message="stage failed"))


def on_failure(stage_name: str, err: ErrorInfo) -> Recover | FailJob:
    """The StageSpec's failure policy, unless the failure must stop the job whatever the stage."""
    policy = spec(stage_name).on_failure if err.code not in NO_FALLBACK_CODES else "fail"
    if policy != "fail":
        return Recover(policy, FALLBACK_MESSAGES[policy], err.message[:500])
    code = ErrorCode(err.code) if err.code in JOB_FAILURE_CODES else ErrorCode.MODULE_FAILURE
    message = err.message if code in NO_FALLBACK_CODES else f"{stage_name} failed: {err.message}"
    return FailJob(code, message[:1000])


def budget_allows(stage_name: str, spent: Decimal, stage_estimate: Decimal, limit: Decimal) -> bool:
    """A budget-checked stage starts only if its planned cost (``costs.estimate_stage``) fits in
    what is left of the cap."""
    if not spec(stage_name).budget_checked:
        return True
    return costs.within(spent, stage_estimate, limit)


def after_success(stage_name: str) -> StageSpec | None:
    """The stage to dispatch next, or ``None``: the job is complete."""
    return next_stage(stage_name)


@dataclass(frozen=True, slots=True)
class Redispatch:
    """Dispatch the stage again (a new dispatch number)."""

    reason: str


def on_stuck(stage_name: str, dispatch: int, max_dispatches: int, idle_seconds: float) -> Redispatch | FailJob:
    """A stage whose worker is alive but reported no progress for ``idle_seconds``: dispatched
    again while it has had fewer than ``max_dispatches`` dispatches, else the job fails clearly."""
    if dispatch < max_dispatches:
        return Redispatch(f"no progress for {idle_seconds:.0f} s")
    message = f"{stage_name} made no progress for {idle_seconds:.0f} s (dispatched {dispatch} times)"
    return FailJob(ErrorCode.MODULE_FAILURE, message)
