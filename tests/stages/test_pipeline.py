"""The six stages in sequence, on real songs, to a playable MP4."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from montage_common.storage import LocalStorage
from montage_stages.local_pipeline import run_all
from montage_stages.media import ffmpeg
from montage_stages.media.soundtrack import soundtrack_key
from montage_stages.runtime.context import StageContext

from .conftest import SONG_SECONDS, Recorder
from .media import correlation, decode_errors, envelope, frame_count


@pytest.mark.parametrize("ext", ["wav", "mp3", "flac"])
async def test_song_to_music_video(
    ext: str,
    song_files: dict[str, Path],
    storage: LocalStorage,
    make_ctx: Callable[..., StageContext],
    recorder: Recorder,
) -> None:
    job = f"job-{ext}"
    audio_key = f"audio-uploads/{job}/song.{ext}"
    await storage.put_file(audio_key, song_files[ext])
    ctx = make_ctx(job)

    run = await run_all(ctx, job, audio_key, "a neon city at night, two friends dancing")
    analysis, plan, refs, prompts, clips, out = (
        run.analysis,
        run.plan,
        run.references,
        run.prompts,
        run.clips,
        run.video,
    )

    # the plan follows the song: clips tile it, inner boundaries on beats, lengths 3..8 s (+ folding)
    scripts = plan.clip_scripts
    assert scripts[0].start == 0.0 and scripts[-1].end == pytest.approx(analysis.duration)
    assert all(a.end == b.start for a, b in itertools.pairwise(scripts))
    assert all(min(abs(s.start - b) for b in analysis.beat_timestamps) < 1e-3 for s in scripts[1:])
    assert all(1.5 <= s.end - s.start <= 12.0 for s in scripts)
    assert len(refs.scene_references) == len(plan.scenes)
    for ref in refs.scene_references + refs.character_references:
        assert await storage.exists(ref.key)
    assert all(p.reference_keys for p in prompts.clips) and not prompts.text_only
    assert len(clips.clips) == len(scripts) and not clips.failed
    assert f"Rendering clip {len(scripts)} of {len(scripts)}" in recorder.progress
    # the plan's transitions reach video_generator in its input (built by the stage's spec)
    planned = [t for t in plan.transitions if t.kind != "cut"]
    assert planned and all(t.duration > 0 for t in planned)

    # a playable MP4 of the song's length whose audio is the song
    assert out.key == f"video-outputs/{job}/final_video.mp4"
    video = storage.path_of(out.key)
    assert await decode_errors(video) == ""
    assert await ffmpeg.media_duration(video) == pytest.approx(analysis.duration, abs=0.1)
    assert await frame_count(video) == round(analysis.duration * ctx.settings.video_fps)
    assert analysis.duration == pytest.approx(SONG_SECONDS, abs=0.1)
    assert correlation(await envelope(video), await envelope(song_files[ext])) > 0.95
    assert await storage.exists(soundtrack_key(job))  # encoded by audio_parser, copied by the composer

    # cuts land on detected beats, within one frame
    frame = 1.0 / ctx.settings.video_fps
    assert out.cuts == [s.start for s in scripts[1:]]
    assert all(min(abs(c - b) for b in analysis.beat_timestamps) <= frame for c in out.cuts)

    # every stage priced its work with a stable call id
    ids = {c.call_id for c in recorder.costs}
    stages = ("audio_parser", "scene_planner", "reference_generator", "prompt_generator", "composer")
    assert {f"{job}:{s}:local" for s in stages} <= ids
    assert {f"{job}:video_generator:clip_{s.index}" for s in scripts} <= ids
    assert all(c.amount >= 0 for c in recorder.costs)
