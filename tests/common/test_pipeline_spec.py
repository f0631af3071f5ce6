"""The pipeline's one definition is self-consistent."""

from __future__ import annotations

from decimal import Decimal

from montage_contracts import pricing
from montage_contracts.pipeline import FINAL_STATUSES, MIN_CLIPS, PIPELINE, STAGES, JobStatus, next_stage, spec


def test_stages_in_order_with_rising_progress_to_100() -> None:
    assert STAGES == (
        "audio_parser", "scene_planner", "reference_generator", "prompt_generator", "video_generator", "composer",
    )  # fmt: skip
    marks = [s.progress for s in PIPELINE]
    assert marks == sorted(set(marks)) and marks[-1] == 100


def test_every_stage_has_a_planned_cost_and_the_estimate_is_their_sum() -> None:
    card = pricing.PriceCard(llm_model="m", llm_prices={"m": (1.0, 2.0)}, video_provider="ragnarok")
    planned = pricing.plan(card, 60.0)
    assert set(planned) == set(STAGES)
    assert pricing.estimate(card, 60.0) == sum(planned.values(), Decimal(0)).quantize(Decimal("0.01"), "ROUND_CEILING")


def test_next_stage_walks_the_pipeline_once() -> None:
    walked, current = [STAGES[0]], spec(STAGES[0])
    while (following := next_stage(current.name)) is not None:
        walked.append(following.name)
        current = following
    assert tuple(walked) == STAGES


def test_failure_policies_of_the_spec() -> None:
    assert spec("scene_planner").on_failure == "fallback_plan"
    assert spec("reference_generator").on_failure == "continue_text_only"
    assert {s.name for s in PIPELINE if s.on_failure == "fail"} == {
        "audio_parser", "prompt_generator", "video_generator", "composer",
    }  # fmt: skip
    assert {s.name for s in PIPELINE if s.budget_checked} == {"reference_generator", "video_generator"}
    assert spec("video_generator").min_clips == MIN_CLIPS == 3


def test_job_statuses_and_the_final_set() -> None:
    assert [s.value for s in JobStatus] == ["queued", "processing", "completed", "failed"]
    assert {"completed", "failed"} == FINAL_STATUSES and "cancelled" not in FINAL_STATUSES
    assert JobStatus("failed").final and not JobStatus.PROCESSING.final
