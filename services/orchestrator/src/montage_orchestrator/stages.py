"""Stage inputs built from earlier outputs (``job_stages.output``), and the fallback plan."""

from __future__ import annotations

import itertools
from typing import TypeVar

import asyncpg
import msgspec
from montage_common.models import (
    AudioAnalysis,
    ClipScript,
    Scene,
    ScenePlan,
    StageInput,
    Transition,
)
from montage_common.pipeline import MIN_CLIPS, PIPELINE, STAGES, JobFacts, spec

T = TypeVar("T", bound=msgspec.Struct)

FALLBACK_CLIP_SECONDS = 6.0
MAX_FALLBACK_CLIPS = 24
_MOTIONS = ("zoom_in", "pan_left", "zoom_out", "pan_right", "pulse")


def _output(rows: dict[str, asyncpg.Record], stage: str, kind: type[T]) -> T | None:
    row = rows.get(stage)
    if row is None or row["output"] is None:
        return None
    return msgspec.json.decode(row["output"], type=kind)


def build_input(stage: str, job: asyncpg.Record, rows: dict[str, asyncpg.Record]) -> StageInput:
    """The input of ``stage`` from the job and the stored outputs of the stages before it."""
    outputs: dict[str, msgspec.Struct] = {}
    for earlier in PIPELINE[: STAGES.index(stage)]:
        found = _output(rows, earlier.name, earlier.output_type)  # none when it failed and was continued past
        if found is not None:
            outputs[earlier.name] = found
    return spec(stage).build_input(JobFacts(audio_key=job["audio_key"], user_prompt=job["user_prompt"]), outputs)


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
