"""Clip rendering: text-only mode, failing clips, cancellation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from montage_common.storage import LocalStorage
from montage_contracts.errors import GenerationError, JobCancelled
from montage_contracts.models import (
    ClipPrompt,
    ClipPrompts,
    ComposerInput,
    PromptGeneratorInput,
    ScenePlan,
    VideoGeneratorInput,
)
from montage_stages.media import synth
from montage_stages.media.clip_encoder import Source
from montage_stages.providers.renderers import LocalRenderer
from montage_stages.runtime.context import StageContext
from montage_stages.stages import composer, prompt_generator, video_generator
from montage_stages.stages.audio_parser import analyse
from montage_stages.stages.scene_planner import local_plan
from prometheus_client import REGISTRY

from .media import decode_errors

CLIP_SECONDS = 1.0


def six_prompts() -> ClipPrompts:
    palette = ["#203060", "#e0a040", "#40c0a0", "#101020"]
    return ClipPrompts(
        clips=[
            ClipPrompt(
                index=i,
                prompt=f"shot {i}",
                start=i * CLIP_SECONDS,
                end=(i + 1) * CLIP_SECONDS,
                scene_id="scene_1",
                palette=palette,
                motion=m,
                beats=[0.0, 0.5],
            )
            for i, m in enumerate(["zoom_in", "zoom_out", "pan_left", "pan_right", "pulse", "zoom_in"])
        ],
        text_only=True,
    )


class FailingRenderer:
    """A provider that fails some clips and renders the rest locally."""

    name = "flaky"

    def __init__(self, failing: set[int]) -> None:
        self.failing = failing
        self.local = LocalRenderer()

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        if prompt.index in self.failing:
            raise GenerationError(f"provider refused clip {prompt.index}")
        return await self.local.render(ctx, job_id, prompt, dest)


async def test_text_only_prompts_render(tmp_path: Path, make_ctx: Callable[..., StageContext]) -> None:
    samples = synth.song(12.0, 120.0)[::2].copy()
    plan: ScenePlan = local_plan("a lonely lighthouse", analyse(samples, 22050))
    ctx = make_ctx()

    prompts = await prompt_generator.process(ctx, "job1", PromptGeneratorInput(plan=plan, references=None))
    clips = await video_generator.process(ctx, "job1", VideoGeneratorInput(clip_prompts=prompts))

    assert prompts.text_only and all(not p.reference_keys for p in prompts.clips)
    assert [c.index for c in clips.clips] == [c.index for c in plan.clip_scripts] and not clips.failed


@pytest.mark.parametrize(("failing", "expect_ok"), [({1, 4}, 4), ({0, 2, 3, 5}, 2)])
async def test_failing_clips_do_not_stop_the_others(
    failing: set[int], expect_ok: int, storage: LocalStorage, make_ctx: Callable[..., StageContext]
) -> None:
    ctx = make_ctx()
    before = (
        REGISTRY.get_sample_value("montage_clips_rendered_total", {"provider": "flaky", "outcome": "failed"}) or 0.0
    )

    clips = await video_generator.process(
        ctx, "job1", VideoGeneratorInput(clip_prompts=six_prompts()), renderer=FailingRenderer(failing)
    )

    assert len(clips.clips) == expect_ok
    assert sorted(f.index for f in clips.failed) == sorted(failing)
    assert all("provider refused" in f.error for f in clips.failed)
    after = REGISTRY.get_sample_value("montage_clips_rendered_total", {"provider": "flaky", "outcome": "failed"})
    assert after == before + len(failing)
    for clip in clips.clips:
        assert await storage.exists(clip.key)
        assert clip.provider == "flaky"


async def test_composer_covers_failed_clips(
    tmp_path: Path, storage: LocalStorage, make_ctx: Callable[..., StageContext]
) -> None:
    ctx = make_ctx()
    clips = await video_generator.process(
        ctx, "job1", VideoGeneratorInput(clip_prompts=six_prompts()), renderer=FailingRenderer({0, 3})
    )
    song = synth.write_wav(tmp_path / "song.wav", synth.song(6.0, 120.0))
    await storage.put_file("audio-uploads/job1/song.wav", song)
    beats = [0.5 * k for k in range(12)]

    out = await composer.process(
        ctx,
        "job1",
        ComposerInput(clips=clips, audio_key="audio-uploads/job1/song.wav", transitions=[], beats=beats, duration=6.0),
    )

    assert out.cuts == [2.0, 4.0, 5.0]  # clip 1 covers clip 0's span, clip 2 covers clip 3's
    assert await decode_errors(storage.path_of(out.key)) == ""


async def test_cancel_stops_rendering(storage: LocalStorage, make_ctx: Callable[..., StageContext]) -> None:
    cancelled = False
    rendered: list[str] = []

    async def progress(text: str) -> None:
        nonlocal cancelled
        rendered.append(text)
        cancelled = True  # the user cancels as soon as the first clip starts

    async def check_cancelled() -> None:
        if cancelled:
            raise JobCancelled(job_id="job1")

    from montage_stages.runtime.settings import StageSettings

    ctx = make_ctx(
        settings=StageSettings(video_width=160, video_height=90, video_fps=12, max_parallel_clips=1),
        progress=progress,
        check_cancelled=check_cancelled,
    )

    with pytest.raises(JobCancelled):
        await video_generator.process(ctx, "job1", VideoGeneratorInput(clip_prompts=six_prompts()))

    assert rendered == ["Rendering clip 1 of 6"]
    assert len([o for o in await storage.list("video-clips/job1/") if o.key.endswith(".mp4")]) <= 1
