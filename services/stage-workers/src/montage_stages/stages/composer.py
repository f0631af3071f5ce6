"""Stage 6, composer (critical): join the clips without re-encoding and mux the original song.

``async def process(ctx, job_id, input: ComposerInput) -> VideoOutput``

video_generator encodes every clip in its final form: cut on the beat, transitions inside the clips
that meet, failed clips' spans covered by their neighbours, and together the clips tile the song
frame by frame (see :mod:`timeline`). The composer checks that they do and that every clip has the
same H.264 configuration, then joins them with the concat demuxer and ``-c:v copy`` (each clip's
packets unchanged), adds the song's AAC track (encoded during audio_parser, see :mod:`soundtrack`;
encoded here when missing) and writes ``video-outputs/{job_id}/final_video.mp4`` with
``+faststart`` (H.264 High yuv420p and AAC: plays in browsers). Its length is ``round(duration * fps)`` frames. ``input.transitions`` and
``input.beats`` are not needed any more: the clips carry them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from montage_common.storage import layout
from montage_contracts.errors import PipelineError
from montage_contracts.models import Clip, ComposerInput, VideoOutput

from montage_stages.media import ffmpeg, mp4box
from montage_stages.media.clip_encoder import timescale
from montage_stages.media.soundtrack import aac_args, soundtrack_key
from montage_stages.providers.costing import ComputeMeter
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.metrics import track_stage
from montage_stages.runtime.settings import StageSettings

STAGE = "composer"
log = structlog.get_logger()


def output_key(job_id: str) -> str:
    return layout.final_video(job_id)


def check_tiling(clips: list[Clip], duration: float, fps: int) -> None:
    """Clips must cover ``[0, duration)`` back to back, to the frame (raises PipelineError otherwise)."""
    if not clips:
        raise PipelineError("no clips to compose")
    tolerance = 0.5 / fps  # closer than half a frame: the same frame boundary
    edge = 0.0
    for clip in clips:
        if abs(clip.start - edge) > tolerance:
            raise PipelineError(f"clip {clip.index} starts at {clip.start:.3f} s, expected {edge:.3f} s")
        edge = clip.end
    if abs(edge - duration) > tolerance:
        raise PipelineError(f"the clips end at {edge:.3f} s, the song at {duration:.3f} s")


def concat_list(paths: list[Path]) -> str:
    """An ffconcat script naming ``paths`` (relative to the script, which sits beside them)."""
    return "ffconcat version 1.0\n" + "".join(f"file '{p.name}'\n" for p in paths)


def compose_args(listing: Path, audio: Path, final: Path, s: StageSettings, *, audio_is_aac: bool) -> list[str]:
    """Join the listed clips' video packets as they are, with the song's AAC track (copied when
    ``audio`` is already the encoded track, else encoded here)."""
    return [
        "-v", "error", "-y",
        "-f", "concat", "-safe", "0", "-auto_convert", "0", "-i", str(listing),
        "-i", str(audio),
        "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "copy", "-video_track_timescale", str(timescale(s.video_fps)),
        *(["-c:a", "copy"] if audio_is_aac else aac_args(s)),
        "-map_metadata", "-1", "-movflags", "+faststart", str(final),
    ]  # fmt: skip


async def process(ctx: StageContext, job_id: str, input: ComposerInput) -> VideoOutput:
    async with track_stage(STAGE):
        await ctx.check_cancelled()
        s = ctx.settings
        clips = sorted(input.clips.clips, key=lambda c: c.index)
        check_tiling(clips, input.duration, s.video_fps)
        work = ctx.scratch("compose")
        meter = ComputeMeter(ctx, job_id, STAGE)
        with meter:
            track = soundtrack_key(job_id)
            audio_is_aac = await ctx.storage.exists(track)
            if audio_is_aac:
                audio = await ctx.storage.get_file(track, work / "soundtrack.m4a")
            else:
                audio = await ctx.storage.get_file(input.audio_key, work / "song")
            paths: list[Path] = []
            for i, clip in enumerate(clips):
                local = work / f"clip_{clip.index}.mp4"
                await ctx.storage.get_file(clip.key, local)
                paths.append(local)
                if i % 8 == 7:
                    await ctx.check_cancelled()
            video = _same_codec(paths)
            listing = work / "clips.ffconcat"
            listing.write_text(concat_list(paths))
            final = work / "final_video.mp4"
            await ctx.progress(f"Composing {len(clips)} clips")
            await ffmpeg.run(compose_args(listing, audio, final, s, audio_is_aac=audio_is_aac), exe=s.ffmpeg_path)
            key = output_key(job_id)
            size = await ctx.storage.put_file(key, final, "video/mp4")
            poster = await _poster(ctx, job_id, final, work / "poster.jpg", input.duration)
        await meter.report()
        cuts = [round(c.start, 4) for c in clips[1:]]
        log.info("video_composed", job_id=job_id, clips=len(clips), size=size)
        return VideoOutput(
            key=key,
            duration=round(input.duration, 3),
            width=video.width,
            height=video.height,
            size_bytes=size,
            cuts=cuts,
            poster_key=poster,
        )


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def poster_args(video: Path, dest: Path, at: float) -> list[str]:
    """One frame of ``video`` at ``at`` seconds as a JPEG."""
    return ["-v", "error", "-y", "-ss", f"{at:.3f}", "-i", str(video), "-frames:v", "1", "-q:v", "3", str(dest)]


async def _poster(ctx: StageContext, job_id: str, video: Path, dest: Path, duration: float) -> str | None:
    """A frame a third of the way in, stored beside the video; ``None`` (and a log) when it fails:
    a video without a poster is still the video."""
    at = max(0.0, duration / 3)
    try:
        await ffmpeg.run(poster_args(video, dest, at), exe=ctx.settings.ffmpeg_path)
        if not await asyncio.to_thread(_nonempty, dest):  # past the last frame: the first one
            await ffmpeg.run(poster_args(video, dest, 0.0), exe=ctx.settings.ffmpeg_path)
        key = layout.poster(job_id)
        await ctx.storage.put_file(key, dest, "image/jpeg")
    except Exception as exc:
        log.warning("poster_failed", job_id=job_id, error=str(exc)[:200])
        return None
    return key


def _same_codec(paths: list[Path]) -> mp4box.VideoTrack:
    """The clips' common H.264 configuration; PipelineError when a clip differs (it cannot be
    joined without re-encoding, e.g. the video settings changed between the two stages)."""
    try:
        tracks = [mp4box.video_track(p) for p in paths]
    except mp4box.Mp4Error as exc:
        raise PipelineError(f"unreadable clip: {exc}") from None
    first = tracks[0]
    if first.codec != "avc1" or not first.avcc:
        raise PipelineError(f"clips are {first.codec}, not H.264 (avc1)")
    for path, track in zip(paths, tracks, strict=True):
        if track != first:
            raise PipelineError(
                f"{path.name} is encoded differently from {paths[0].name} "
                f"({track.width}x{track.height}, {track.profile}) and cannot be joined without re-encoding"
            )
    return first
