"""The orchestrator's decisions without Postgres or Redis: every failure rule of the spec."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from montage_contracts.errors import ErrorCode
from montage_contracts.messages import ErrorInfo
from montage_contracts.models import Clips, VideoOutput
from montage_orchestrator import decisions
from montage_orchestrator.decisions import FailJob, Recover


def _clips(n: int, failed: int = 0) -> bytes:
    raw = msgspec.json.encode(
        {
            "clips": [
                {"index": i, "key": f"video-clips/j/{i}.mp4", "start": 2.0 * i, "end": 2.0 * i + 2, "duration": 2.0}
                for i in range(n)
            ],
            "failed": [{"index": i, "error": "provider down"} for i in range(n, n + failed)],
        }
    )
    msgspec.json.decode(raw, type=Clips)  # the fixture itself must be a valid Clips
    return raw


def test_a_valid_output_is_decoded_into_the_stage_type() -> None:
    raw = msgspec.json.encode(
        {"key": "video-outputs/u/j/final_video.mp4", "duration": 12.0, "width": 640, "height": 360, "size_bytes": 9}
    )
    judged = decisions.judge_result("composer", True, raw, None)
    assert isinstance(judged.output, VideoOutput) and judged.error is None


def test_an_undecodable_output_is_a_module_failure() -> None:
    judged = decisions.judge_result("scene_planner", True, b"{not json", None)
    assert judged.output is None and judged.error is not None and judged.error.code == ErrorCode.MODULE_FAILURE


@pytest.mark.parametrize(("good", "failed", "passes"), [(3, 2, True), (2, 3, False), (0, 5, False)])
def test_fewer_than_three_clips_fail_the_video_stage(good: int, failed: int, passes: bool) -> None:
    judged = decisions.judge_result("video_generator", True, _clips(good, failed), None)
    assert (judged.error is None) is passes
    if not passes:
        assert judged.error is not None and f"({good} of {good + failed})" in judged.error.message


def test_failure_policies() -> None:
    err = ErrorInfo(code=ErrorCode.GENERATION_ERROR, message="provider down")
    assert decisions.on_failure("reference_generator", err) == Recover(
        "continue_text_only", decisions.FALLBACK_MESSAGES["continue_text_only"], "provider down"
    )
    assert isinstance(decisions.on_failure("scene_planner", err), Recover)
    for stage in ("audio_parser", "prompt_generator", "video_generator", "composer"):
        assert decisions.on_failure(stage, err) == FailJob(ErrorCode.GENERATION_ERROR, f"{stage} failed: provider down")


@pytest.mark.parametrize("code", [ErrorCode.BUDGET_EXCEEDED, ErrorCode.CANCELLED])
def test_budget_and_cancel_take_no_fallback(code: ErrorCode) -> None:
    decision = decisions.on_failure("scene_planner", ErrorInfo(code=code, message="stop"))
    assert decision == FailJob(code, "stop")


def test_unknown_codes_are_module_failures() -> None:
    decision = decisions.on_failure("composer", ErrorInfo(code="HANDOFF_FAILED", message="x"))
    assert decision == FailJob(ErrorCode.MODULE_FAILURE, "composer failed: x")


def test_budget_precheck_only_for_the_expensive_stages() -> None:
    planned, limit = Decimal("156"), Decimal("2000")  # video_generator's planned cost
    assert decisions.budget_allows("video_generator", Decimal("1800"), planned, limit)  # 156 fits in 200
    assert not decisions.budget_allows("video_generator", Decimal("1900"), planned, limit)
    assert decisions.budget_allows("composer", Decimal("1999.99"), planned, limit)  # not checked


def test_after_success_walks_the_pipeline() -> None:
    nxt = decisions.after_success("prompt_generator")
    assert nxt is not None and nxt.name == "video_generator"
    assert decisions.after_success("composer") is None


def test_a_stuck_stage_is_dispatched_again_until_its_dispatches_are_spent() -> None:
    assert decisions.on_stuck("composer", 1, 3, 301.0) == decisions.Redispatch("no progress for 301 s")
    assert isinstance(decisions.on_stuck("composer", 2, 3, 301.0), decisions.Redispatch)
    failed = decisions.on_stuck("composer", 3, 3, 301.0)
    assert isinstance(failed, decisions.FailJob)
    assert failed.code == ErrorCode.MODULE_FAILURE
    assert failed.message == "composer made no progress for 301 s (dispatched 3 times)"
