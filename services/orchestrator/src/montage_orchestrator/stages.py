"""Stage inputs built from earlier outputs (``job_stages.output``), and the fallback plan."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import msgspec
from montage_contracts.models import (
    AudioAnalysis,
    ClipScript,
    Scene,
    ScenePlan,
    StageInput,
    Transition,
)
from montage_contracts.pipeline import MIN_CLIPS, PIPELINE, JobFacts, spec

FALLBACK_CLIP_SECONDS = 6.0
MAX_FALLBACK_CLIPS = 24
_MOTIONS = ("zoom_in", "pan_left", "zoom_out", "pan_right", "pulse")


# What each stage's input is built from (``StageSpec.inputs_from``; ``tests/orchestrator/test_stages.py``
# checks that these are enough and all needed): a dispatch reads only these from ``job_stages``.
INPUT_SOURCES: dict[str, tuple[str, ...]] = {s.name: s.inputs_from for s in PIPELINE}


def build_input(
    stage: str,
    facts: JobFacts,
    stored: Mapping[str, str | bytes | None],
    known: Mapping[str, msgspec.Struct] | None = None,
) -> StageInput:
    """The input of ``stage`` from the job and the outputs of the stages it is built from: ``known``
    (decoded already) first, else ``stored`` (JSON; none when the stage failed and was continued past)."""
    outputs: dict[str, msgspec.Struct] = {}
    for earlier in INPUT_SOURCES[stage]:
        if known and earlier in known:
            outputs[earlier] = known[earlier]
        elif (raw := stored.get(earlier)) is not None:
            outputs[earlier] = msgspec.json.decode(raw, type=spec(earlier).output_type)
    return spec(stage).build_input(facts, outputs)


def _snap(target: float, beats: list[float], low: float, high: float) -> float:
    inside = [b for b in beats if low < b < high]
    return min(inside, key=lambda b: abs(b - target)) if inside else target


def fallback_plan(user_prompt: str, audio: AudioAnalysis) -> ScenePlan:
    """A simple plan: evenly spaced clips with boundaries snapped to beats, hard cuts, one scene."""
    duration = max(audio.duration, 0.3)
    count = max(MIN_CLIPS, min(MAX_FALLBACK_CLIPS, round(duration / FALLBACK_CLIP_SECONDS)))
    beats = sorted(b for b in audio.beat_timestamps if 0.0 < b < duration)
    step = duration / count
    bounds = [0.0]
    for i in range(1, count):
        target = step * i
        # keep every clip at least a third of a step long
        bounds.append(_snap(target, beats, bounds[-1] + step / 3, target + step * 2 / 3))
    bounds.append(duration)
    text = " ".join(user_prompt.split())[:300]
    scene = Scene(id="scene_1", description=text, setting="")
    scripts = [
        ClipScript(
            index=i,
            start=round(start, 3),
            end=round(end, 3),
            scene_id=scene.id,
            description=text,
            motion=_MOTIONS[i % len(_MOTIONS)],
            beats=[round(b - start, 3) for b in beats if start <= b < end],
        )
        for i, (start, end) in enumerate(itertools.pairwise(bounds))
    ]
    transitions = [Transition(after_clip=i, kind="cut") for i in range(count - 1)]
    return ScenePlan(
        style="simple",
        characters=[],
        scenes=[scene],
        clip_scripts=scripts,
        transitions=transitions,
        planner="orchestrator-fallback",
        fallback=True,
    )
