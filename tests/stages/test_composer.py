"""Clips encoded once and joined without re-encoding: the final file, transitions, failed clips.

Each clip here is a flat colour (``SolidRenderer``), so the colour of a decoded frame tells which
clip it shows, and a mixture of two colours is a transition.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from montage_common.storage import LocalStorage
from montage_contracts.errors import GenerationError, PipelineError
from montage_contracts.models import (
    ClipPrompt,
    ClipPrompts,
    Clips,
    ComposerInput,
    Transition,
    VideoGeneratorInput,
    VideoOutput,
)
from montage_stages.media import ffmpeg, imaging, mp4box, soundtrack, synth
from montage_stages.media.clip_encoder import Source, StillSource, VideoSource
from montage_stages.media.soundtrack import soundtrack_key
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.settings import StageSettings
from montage_stages.stages import composer, video_generator

from .media import decode_errors, frame_colours, frame_count, packet_hashes, stream_lines

FPS = 12
CLIP_SECONDS = 1.5
SONG_SECONDS = 6.0
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]  # red, green, blue, yellow
TRANSITIONS = [  # a fade into clip 1, a cut into clip 2, a dissolve into clip 3
    Transition(after_clip=0, kind="fade", duration=0.5),
    Transition(after_clip=1, kind="cut"),
    Transition(after_clip=2, kind="dissolve", duration=0.5),
]


def prompts() -> list[ClipPrompt]:
    return [
        ClipPrompt(
            index=i,
            prompt=f"shot {i}",
            start=i * CLIP_SECONDS,
            end=(i + 1) * CLIP_SECONDS,
            scene_id="scene_1",
            motion="pulse",
        )
        for i in range(len(COLOURS))
    ]


class SolidRenderer:
    """Every clip a still of one flat colour; clips in ``failing`` are refused."""

    name = "solid"

    def __init__(self, failing: set[int] | None = None) -> None:
        self.failing = failing or set()

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        if prompt.index in self.failing:
            raise GenerationError(f"provider refused clip {prompt.index}")
        w, h = ctx.settings.frame_size
        still = dest.with_suffix(".png")
        still.write_bytes(imaging.png_bytes(np.full((2 * h, 2 * w, 3), COLOURS[prompt.index], dtype=np.uint8)))
        return StillSource(still, prompt.motion)


class ProviderRenderer(SolidRenderer):
    """A provider's clips: MPEG-4 Part 2 at 200x120 and 10 fps, 0.8 s long whatever was asked."""

    name = "provider"

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        if prompt.index in self.failing:
            raise GenerationError(f"provider refused clip {prompt.index}")
        r, g, b = COLOURS[prompt.index]
        await ffmpeg.run(
            ["-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=0x{r:02x}{g:02x}{b:02x}:s=200x120:r=10:d=0.8",
             "-c:v", "mpeg4", "-q:v", "2", str(dest)]
        )  # fmt: skip
        return VideoSource(dest, prompt.end - prompt.start)


class BrokenSourceRenderer(SolidRenderer):
    """Clips in ``failing`` get a source ffmpeg cannot read: they fail when encoded, after their
    neighbours may have been encoded already."""

    name = "broken"

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        if prompt.index in self.failing:
            dest.write_bytes(b"not a video")
            return VideoSource(dest, prompt.end - prompt.start)
        return await SolidRenderer().render(ctx, job_id, prompt, dest)


@pytest.fixture
def solid_settings() -> StageSettings:
    return StageSettings(video_width=160, video_height=96, video_fps=FPS, max_parallel_clips=3)


async def render_and_compose(
    ctx: StageContext,
    storage: LocalStorage,
    tmp_path: Path,
    renderer: SolidRenderer,
    transitions: list[Transition] | None = None,
) -> tuple[Clips, VideoOutput, Path]:
    job = ctx.job_id
    clip_prompts = prompts()
    clips = await video_generator.process(
        ctx,
        job,
        VideoGeneratorInput(
            clip_prompts=ClipPrompts(clips=clip_prompts),
            transitions=TRANSITIONS if transitions is None else transitions,
        ),
        renderer=renderer,
    )
    song = synth.write_wav(tmp_path / "song.wav", synth.song(SONG_SECONDS, 120.0))
    await storage.put_file(f"audio-uploads/{job}/song.wav", song)
    out = await composer.process(
        ctx,
        job,
        ComposerInput(
            clips=clips, audio_key=f"audio-uploads/{job}/song.wav", transitions=[], beats=[], duration=SONG_SECONDS
        ),
    )
    return clips, out, storage.path_of(out.key)


def matches(frames: str, pattern: str) -> bool:
    """``frames`` against ``pattern``, where ``?`` stands for any frame (a transition's last, nearly done)."""
    return len(frames) == len(pattern) and all(p in ("?", f) for f, p in zip(frames, pattern, strict=True))


def labels(colours: np.ndarray) -> str:
    """One letter per frame: the clip colour it shows (r, g, b, y), or ``*`` for a mixture."""
    out = []
    for c in colours:
        dist = [float(np.abs(c - np.array(k)).max()) for k in COLOURS]
        best = int(np.argmin(dist))
        out.append("rgby"[best] if dist[best] < 30 else "*")
    return "".join(out)


async def test_final_video_plays_in_browsers_and_has_the_songs_length(
    tmp_path: Path,
    storage: LocalStorage,
    make_ctx: Callable[..., StageContext],
    solid_settings: StageSettings,
) -> None:
    ctx = make_ctx(settings=solid_settings)

    clips, out, video = await render_and_compose(ctx, storage, tmp_path, SolidRenderer())

    streams = await stream_lines(video)
    assert any("Video: h264 (High)" in s and "yuv420p" in s for s in streams), streams
    assert any("Audio: aac" in s for s in streams), streams
    boxes = mp4box.top_level(video)
    assert boxes.index("moov") < boxes.index("mdat")  # faststart: playback starts before the download ends
    assert await decode_errors(video) == ""
    assert await frame_count(video) == round(SONG_SECONDS * FPS)
    assert (out.width, out.height) == (160, 96) and out.duration == SONG_SECONDS
    assert out.cuts == [1.5, 3.0, 4.5]
    assert [c.duration for c in clips.clips] == [CLIP_SECONDS] * 4


async def test_composer_joins_the_clips_without_re_encoding(
    tmp_path: Path,
    storage: LocalStorage,
    make_ctx: Callable[..., StageContext],
    solid_settings: StageSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = make_ctx(settings=solid_settings)
    commands: list[list[str]] = []
    real_run = ffmpeg.run

    async def recording_run(args: list[str], **kwargs: object) -> tuple[bytes, str]:
        commands.append(args)
        return await real_run(args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(composer.ffmpeg, "run", recording_run)
    # the AAC track audio_parser encodes while it analyses the song
    song = synth.write_wav(tmp_path / "song.wav", synth.song(SONG_SECONDS, 120.0))
    assert await soundtrack.prepare(ctx, ctx.job_id, song)

    clips, _, video = await render_and_compose(ctx, storage, tmp_path, SolidRenderer())

    compose = [c for c in commands if "concat" in c]
    assert len(compose) == 1
    args = compose[0]
    assert args[args.index("-c:v") + 1] == "copy" and args[args.index("-c:a") + 1] == "copy"
    assert "libx264" not in args and "aac" not in args
    joined: list[str] = []
    for clip in clips.clips:
        joined += await packet_hashes(storage.path_of(clip.key))
    assert await packet_hashes(video) == joined  # every video packet is a clip's, byte for byte
    track = storage.path_of(soundtrack_key(ctx.job_id))
    assert await packet_hashes(video, "a") == await packet_hashes(track, "a")
    assert any("Audio: aac" in line for line in await stream_lines(video))


async def test_transitions_are_rendered_inside_the_incoming_clip(
    tmp_path: Path,
    storage: LocalStorage,
    make_ctx: Callable[..., StageContext],
    solid_settings: StageSettings,
) -> None:
    ctx = make_ctx(settings=solid_settings)

    clips, _, video = await render_and_compose(ctx, storage, tmp_path, SolidRenderer())

    frames = labels(await frame_colours(video))
    # 18 frames a clip; the 0.5 s transitions take 6 frames from the cut on, starting on the old clip
    fade, dissolve = "r****?", "b****?"
    assert matches(frames, "r" * 18 + fade + "g" * 12 + "b" * 18 + dissolve + "y" * 12), frames
    # the fade is in clip 1's own file: it opens on clip 0's colour
    assert labels(await frame_colours(storage.path_of(clips.clips[1].key)))[:2] == "r*"


@pytest.mark.parametrize(
    ("failing", "expected", "cuts"),
    [
        ({2}, "r" * 18 + "r****?" + "g" * 30 + "y" * 18, [1.5, 4.5]),  # clip 1 runs on over clip 2's span
        ({0}, "g" * 36 + "b" * 18 + "b****?" + "y" * 12, [3.0, 4.5]),  # clip 1 starts the video
    ],
)
@pytest.mark.parametrize("renderer", [SolidRenderer, BrokenSourceRenderer])
async def test_a_failed_clip_is_covered_by_its_neighbour(
    renderer: type[SolidRenderer],
    failing: set[int],
    expected: str,
    cuts: list[float],
    tmp_path: Path,
    storage: LocalStorage,
    make_ctx: Callable[..., StageContext],
    solid_settings: StageSettings,
) -> None:
    ctx = make_ctx(settings=solid_settings)

    clips, out, video = await render_and_compose(ctx, storage, tmp_path, renderer(failing))

    assert [f.index for f in clips.failed] == sorted(failing)
    assert matches(labels(await frame_colours(video)), expected)
    assert out.cuts == cuts
    assert await frame_count(video) == round(SONG_SECONDS * FPS)
    assert await decode_errors(video) == ""


async def test_provider_clips_are_normalised_to_the_common_encoding(
    tmp_path: Path,
    storage: LocalStorage,
    make_ctx: Callable[..., StageContext],
    solid_settings: StageSettings,
) -> None:
    ctx = make_ctx(settings=solid_settings)

    clips, out, video = await render_and_compose(ctx, storage, tmp_path, ProviderRenderer({2}))

    # 0.8 s sources: clip 0 holds its last frame; clip 1, covering 3 s, loops; clip 3 holds
    assert matches(labels(await frame_colours(video)), "r" * 18 + "r****?" + "g" * 30 + "y" * 18)
    assert await frame_count(video) == round(SONG_SECONDS * FPS)
    assert (out.width, out.height) == (160, 96)
    assert all(c.provider == "provider" for c in clips.clips)
    assert await decode_errors(video) == ""


async def test_composer_refuses_clips_it_cannot_join(
    tmp_path: Path,
    storage: LocalStorage,
    make_ctx: Callable[..., StageContext],
    solid_settings: StageSettings,
) -> None:
    ctx = make_ctx(settings=solid_settings)
    clips, _, _ = await render_and_compose(ctx, storage, tmp_path, SolidRenderer(), transitions=[])
    song = f"audio-uploads/{ctx.job_id}/song.wav"

    gap = Clips(clips=[clips.clips[0], *clips.clips[2:]])
    with pytest.raises(PipelineError, match=r"clip 2 starts at 3\.000 s, expected 1\.500 s"):
        await composer.process(
            ctx, ctx.job_id, ComposerInput(clips=gap, audio_key=song, transitions=[], beats=[], duration=SONG_SECONDS)
        )

    # clip 1 encoded again at another size (as if VIDEO_RESOLUTION changed between the stages)
    other = tmp_path / "other.mp4"
    clip1 = storage.path_of(clips.clips[1].key)
    await ffmpeg.run(["-v", "error", "-y", "-i", str(clip1), "-vf", "scale=320:192", "-c:v", "libx264", str(other)])
    await storage.put_file(clips.clips[1].key, other)
    with pytest.raises(PipelineError, match="encoded differently"):
        await composer.process(
            ctx, ctx.job_id, ComposerInput(clips=clips, audio_key=song, transitions=[], beats=[], duration=SONG_SECONDS)
        )


def test_resolution_setting() -> None:
    assert StageSettings().frame_size == (640, 360)
    assert StageSettings(video_resolution="720p").frame_size == (1280, 720)
    assert StageSettings(video_resolution="1080p", video_width=100, video_height=50).frame_size == (1920, 1080)
    assert StageSettings(video_width=160, video_height=90).frame_size == (160, 90)


async def test_720p_video(tmp_path: Path, storage: LocalStorage, make_ctx: Callable[..., StageContext]) -> None:
    ctx = make_ctx(settings=StageSettings(video_resolution="720p", video_fps=FPS, max_parallel_clips=2))

    _, out, video = await render_and_compose(ctx, storage, tmp_path, SolidRenderer(), transitions=[])

    track = mp4box.video_track(video)
    assert (track.width, track.height, track.profile) == (1280, 720, "High")
    assert (out.width, out.height) == (1280, 720)
    assert await frame_count(video) == round(SONG_SECONDS * FPS)
