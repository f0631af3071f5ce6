"""All six stages in one process, in order: for benchmarks and the stage tests.

The services run each stage in its own worker over Redis Streams; this runs the same ``process``
functions back to back on one :class:`StageContext`, timing each one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from montage_common.models import (
    AudioAnalysis,
    AudioParserInput,
    ClipPrompts,
    Clips,
    ComposerInput,
    PromptGeneratorInput,
    ReferenceGeneratorInput,
    ReferenceImages,
    ScenePlan,
    ScenePlannerInput,
    VideoGeneratorInput,
    VideoOutput,
)

from montage_stages import (
    audio_parser,
    composer,
    prompt_generator,
    reference_generator,
    scene_planner,
    video_generator,
)
from montage_stages.context import StageContext

T = TypeVar("T")


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
    seconds: dict[str, float] = {}

    async def timed(stage: str, step: Awaitable[T]) -> T:
        start = time.perf_counter()
        result = await step
        seconds[stage] = time.perf_counter() - start
        return result

    analysis = await timed("audio_parser", audio_parser.process(ctx, job_id, AudioParserInput(audio_key=audio_key)))
    plan = await timed(
        "scene_planner", scene_planner.process(ctx, job_id, ScenePlannerInput(user_prompt=user_prompt, audio=analysis))
    )
    refs = await timed(
        "reference_generator", reference_generator.process(ctx, job_id, ReferenceGeneratorInput(plan=plan))
    )
    prompts = await timed(
        "prompt_generator", prompt_generator.process(ctx, job_id, PromptGeneratorInput(plan=plan, references=refs))
    )
    clips = await timed(
        "video_generator", video_generator.process(ctx, job_id, VideoGeneratorInput(clip_prompts=prompts))
    )
    composed = ComposerInput(
        clips=clips,
        audio_key=audio_key,
        transitions=plan.transitions,
        beats=analysis.beat_timestamps,
        duration=analysis.duration,
    )
    video = await timed("composer", composer.process(ctx, job_id, composed))
    return LocalRun(analysis, plan, refs, prompts, clips, video, seconds)
