"""All six stages in one process, in order: for benchmarks and the stage tests.

The services run each stage in its own worker over Redis Streams; this runs the same ``process``
functions back to back on one :class:`StageContext`, timing each one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
from montage_contracts.models import AudioAnalysis, ClipPrompts, Clips, ReferenceImages, ScenePlan, VideoOutput
from montage_contracts.pipeline import PIPELINE, JobFacts

from montage_stages.runtime.context import StageContext
from montage_stages.stages import PROCESS


@dataclass
class LocalRun:
    """Every stage's output, and how long each stage took (seconds)."""

    analysis: AudioAnalysis
    plan: ScenePlan
    references: ReferenceImages
    prompts: ClipPrompts
    clips: Clips
    video: VideoOutput
    seconds: dict[str, float] = field(default_factory=dict)


async def run_all(ctx: StageContext, job_id: str, audio_key: str, user_prompt: str) -> LocalRun:
    """Every stage of :data:`~montage_contracts.pipeline.PIPELINE` in order, each input built by its spec."""
    seconds: dict[str, float] = {}
    outputs: dict[str, msgspec.Struct] = {}
    job = JobFacts(audio_key=audio_key, user_prompt=user_prompt)
    for stage in PIPELINE:
        start = time.perf_counter()
        outputs[stage.name] = await PROCESS[stage.name](ctx, job_id, stage.build_input(job, outputs))
        seconds[stage.name] = time.perf_counter() - start
    return LocalRun(**{_FIELDS[name]: output for name, output in outputs.items()}, seconds=seconds)  # type: ignore[arg-type]


_FIELDS = {
    "audio_parser": "analysis",
    "scene_planner": "plan",
    "reference_generator": "references",
    "prompt_generator": "prompts",
    "video_generator": "clips",
    "composer": "video",
}
