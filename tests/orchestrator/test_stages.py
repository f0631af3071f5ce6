"""Stage inputs: a dispatch reads only the outputs its stage's input is built from."""

from __future__ import annotations

import msgspec
import pytest
from montage_contracts.pipeline import PIPELINE, STAGES, JobFacts, spec
from montage_orchestrator import stages

from tests.orchestrator.conftest import canned_output

JOB = "00000000-0000-0000-0000-000000000001"
FACTS = JobFacts(audio_key=f"audio-uploads/{JOB}/song.wav", user_prompt="a prompt long enough for the test")


def _earlier(stage: str) -> dict[str, msgspec.Struct]:
    return {s.name: canned_output(s.name, JOB) for s in PIPELINE[: STAGES.index(stage)]}


@pytest.mark.parametrize("stage", STAGES)
def test_input_sources_are_enough(stage: str) -> None:
    """Built from INPUT_SOURCES only, the input equals the one built from every earlier output."""
    every = _earlier(stage)
    assert set(stages.INPUT_SOURCES[stage]) <= set(every)
    stored = {name: msgspec.json.encode(every[name]).decode() for name in stages.INPUT_SOURCES[stage]}
    assert stages.build_input(stage, FACTS, stored) == spec(stage).build_input(FACTS, every)


@pytest.mark.parametrize("stage", STAGES)
def test_input_sources_are_all_needed(stage: str) -> None:
    """Without any one of them, the input is not built, or not the same (a reference-less prompt stage)."""
    every = _earlier(stage)
    full = spec(stage).build_input(FACTS, every)
    for missing in stages.INPUT_SOURCES[stage]:
        rest = {k: v for k, v in every.items() if k != missing}
        try:
            built = spec(stage).build_input(FACTS, rest)
        except LookupError:
            continue
        assert built != full, missing


def test_known_outputs_come_before_stored_ones() -> None:
    plan = canned_output("scene_planner", JOB)
    stored = {"scene_planner": None}
    built = stages.build_input("reference_generator", FACTS, stored, {"scene_planner": plan})
    assert built == spec("reference_generator").build_input(FACTS, {"scene_planner": plan})
    with pytest.raises(LookupError):
        stages.build_input("reference_generator", FACTS, stored)
