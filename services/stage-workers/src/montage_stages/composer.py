"""Stage 6, composer (critical): cut the clips on beats, apply transitions, mux the original song.

``async def process(ctx, job_id, input: ComposerInput) -> VideoOutput``

The timeline is the song: clip ``i`` owns ``[start_i, start_{i+1})`` with every inner cut snapped
to the nearest beat. A failed clip's span goes to the clip before it (the first clip's to the one
after), looping that clip when it is too short. A transition of ``d`` seconds after clip ``i`` is an
``xfade`` starting at the cut, so clip ``i`` runs ``d`` seconds longer (its last frame held) and
the incoming clip still starts on the beat; a ``cut`` is a plain concat. The last clip is padded or
trimmed to the song, the original audio is muxed, and the result (H.264 yuv420p, AAC, faststart)
goes to ``video-outputs/{job_id}/final_video.mp4``.
"""

from __future__ import annotations

import structlog
from montage_common.errors import PipelineError
from montage_common.models import Clip, ComposerInput, Transition, VideoOutput

from montage_stages import ffmpeg
from montage_stages.clip_timing import nearest
from montage_stages.context import StageContext
from montage_stages.costing import ComputeMeter
from montage_stages.metrics import track_stage

STAGE = "composer"
SNAP_SECONDS = 0.25  # cuts within this distance of a beat move onto it
LOOP_ABOVE_SECONDS = 1.0  # a clip short by more than this is looped instead of holding its last frame
log = structlog.get_logger()


def output_key(job_id: str) -> str:
    return f"video-outputs/{job_id}/final_video.mp4"


class Segment:
    __slots__ = ("clip", "end", "start", "transition")

    def __init__(self, clip: Clip, start: float, end: float, transition: Transition | None) -> None:
        self.clip, self.start, self.end, self.transition = clip, start, end, transition

    @property
    def tail(self) -> float:
        """Extra seconds this segment runs into the next one (its outgoing xfade)."""
        t = self.transition
        return t.duration if t is not None and t.kind != "cut" else 0.0


def timeline(input: ComposerInput) -> list[Segment]:
    """The segments covering ``[0, duration)``, cuts on beats, failed clips absorbed by neighbours."""
    clips = sorted(input.clips.clips, key=lambda c: c.index)
    if not clips:
        raise PipelineError("no clips to compose")
    beats = sorted(input.beats)
    starts = [0.0]
    for c in clips[1:]:
        snapped = nearest(beats, c.start)
        starts.append(snapped if abs(snapped - c.start) <= SNAP_SECONDS else c.start)
    ends = [*starts[1:], input.duration]
    by_after = {t.after_clip: t for t in input.transitions}
    segments: list[Segment] = []
    for i, (clip, s, e) in enumerate(zip(clips, starts, ends, strict=True)):
        if e - s <= 0.05:
            continue
        trans = None
        if i < len(clips) - 1:
            # the plan's transition after this clip, only when its neighbour is the planned next clip
            t = by_after.get(clip.index)
            nxt = clips[i + 1]
            if t is not None and nxt.index == clip.index + 1 and t.kind != "cut":
                room = 0.45 * min(e - s, ends[i + 1] - starts[i + 1])
                dur = min(t.duration, room)
                trans = Transition(after_clip=clip.index, kind=t.kind, duration=round(dur, 3)) if dur >= 0.1 else None
        segments.append(Segment(clip, s, e, trans))
    return segments


def filter_graph(segments: list[Segment], fps: int, width: int, height: int) -> str:
    parts = []
    for i, seg in enumerate(segments):
        need = seg.end - seg.start + seg.tail
        hold = max(0.0, need - seg.clip.duration) + 1.0 / fps
        parts.append(
            f"[{i}:v]fps={fps},scale={width}:{height},setsar=1,format=yuv420p,"
            f"tpad=stop_mode=clone:stop_duration={hold:.3f},trim=duration={need:.4f},setpts=PTS-STARTPTS,settb=AVTB[v{i}]"
        )
    current = "v0"
    for i in range(1, len(segments)):
        prev = segments[i - 1]
        out = f"x{i}"
        if prev.tail > 0 and prev.transition is not None:
            parts.append(
                f"[{current}][v{i}]xfade=transition={prev.transition.kind}:"
                f"duration={prev.tail:.3f}:offset={segments[i].start:.4f}[{out}]"
            )
        else:
            parts.append(f"[{current}][v{i}]concat=n=2:v=1:a=0,fps={fps},settb=AVTB[{out}]")
        current = out
    parts.append(f"[{current}]settb=AVTB,format=yuv420p[vout]")
    return ";".join(parts)


async def process(ctx: StageContext, job_id: str, input: ComposerInput) -> VideoOutput:
    async with track_stage(STAGE):
        await ctx.check_cancelled()
        s = ctx.settings
        segments = timeline(input)
        work = ctx.scratch("compose")
        meter = ComputeMeter(ctx, job_id, STAGE)
        with meter:
            audio = await ctx.storage.get_file(input.audio_key, work / "song")
            args = ["-v", "error", "-y"]
            for i, seg in enumerate(segments):
                local = work / f"clip_{seg.clip.index}.mp4"
                if not local.exists():
                    await ctx.storage.get_file(seg.clip.key, local)
                if seg.end - seg.start + seg.tail - seg.clip.duration > LOOP_ABOVE_SECONDS:
                    args += ["-stream_loop", "-1"]
                args += ["-i", str(local)]
                if i % 8 == 7:
                    await ctx.check_cancelled()
            args += ["-i", str(audio)]
            graph = filter_graph(segments, s.video_fps, s.video_width, s.video_height)
            final = work / "final_video.mp4"
            args += [
                "-filter_complex", graph,
                "-map", "[vout]", "-map", f"{len(segments)}:a:0",
                "-t", f"{input.duration:.4f}", "-r", str(s.video_fps),
                "-c:v", "libx264", "-preset", s.x264_preset, "-crf", str(s.x264_crf), "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", s.audio_bitrate, "-movflags", "+faststart", str(final),
            ]  # fmt: skip
            await ctx.progress(f"Composing {len(segments)} clips")
            await ffmpeg.run(args, exe=s.ffmpeg_path)
            key = output_key(job_id)
            size = await ctx.storage.put_file(key, final, "video/mp4")
        await meter.report()
        cuts = [round(seg.start, 4) for seg in segments[1:]]
        log.info("video_composed", job_id=job_id, segments=len(segments), size=size)
        return VideoOutput(
            key=key,
            duration=round(input.duration, 3),
            width=s.video_width,
            height=s.video_height,
            size_bytes=size,
            cuts=cuts,
        )
