"""Encode one segment of the final video: its frames, its incoming transition, final codec settings.

A renderer gives each clip a *source*: a still that ffmpeg animates (:class:`StillSource`, the
local renderer) or a provider's video file (:class:`VideoSource`). :func:`segment_args` builds
the single ffmpeg run that draws a :class:`~montage_stages.media.timeline.Segment` from its source and,
for a transition, from the previous clip's source continued past its cut, and encodes it with the
settings every clip shares (:func:`video_codec_args`): same size, frame rate, time base, pixel
format, colour tags and x264 parameters, an IDR frame first and closed GOPs of at most two
seconds. Identical codec parameters are what lets the composer join the clips with ``-c:v copy``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from montage_stages.media.timeline import Segment, Span
from montage_stages.runtime.settings import StageSettings

MAX_PULSES = 48
LOOP_ABOVE_SECONDS = 1.0  # a video source short by more than this loops instead of holding its last frame
# Tags on every frame (x264 writes them into the stream's VUI, so every clip's SPS is the same).
FINISH = "format=yuv420p,setsar=1,setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709"


@dataclass(frozen=True, slots=True)
class StillSource:
    """A still image the local renderer animates (zoom or pan, pulses on the beats)."""

    path: Path
    motion: str = "zoom_in"


@dataclass(frozen=True, slots=True)
class VideoSource:
    """A rendered clip from a provider, of any codec, size and frame rate."""

    path: Path
    seconds: float  # its planned length
    provider_job_id: str = ""  # the provider's job (RAGNAROK: the Nexus job id)
    trace_id: str = ""  # the provider's trace id (RAGNAROK: the Nexus trace id)


Source = StillSource | VideoSource


def video_codec_args(s: StageSettings) -> list[str]:
    """x264 (High profile at most), yuv420p, constant frame rate and time base: the same for every clip."""
    fps = s.video_fps
    return [
        "-c:v", "libx264", "-preset", s.x264_preset, "-crf", str(s.x264_crf),
        "-profile:v", "high", "-pix_fmt", "yuv420p", *(["-x264-params", s.x264_params] if s.x264_params else []),
        "-g", str(2 * fps), "-r", str(fps), "-fps_mode", "cfr", "-threads", str(encoder_threads(s)),
        "-video_track_timescale", str(timescale(fps)),
    ]  # fmt: skip


def encoder_threads(s: StageSettings) -> int:
    """Each of the clips encoded at once gets its share of the cores (x264's own threading costs
    about a tenth more CPU, and the clips already keep every core busy)."""
    return max(1, (os.cpu_count() or 1) // max(1, s.max_parallel_clips))


def timescale(fps: int) -> int:
    return 1000 * fps


def segment_args(seg: Segment, own: Source, previous: Source | None, s: StageSettings, dest: Path) -> list[str]:
    """ffmpeg arguments writing ``seg`` to ``dest`` (video only)."""
    span = seg.span
    args = ["-v", "error", "-y", *_input(own, span.frames, s.video_fps)]
    chain = source_chain(own, span, 0, span.frames, s)
    if seg.previous is not None and previous is not None and seg.transition_frames > 0:
        d = seg.transition_frames
        # the outgoing clip runs on past its cut; a little longer than needed, xfade drops the rest
        tail = source_chain(previous, seg.previous, seg.previous.frames, d + 2, s)
        args += _input(previous, seg.previous.frames + d + 2, s.video_fps)
        # xfade works in 4:4:4: only the transition's frames go through it, the rest of the clip
        # is appended as it is
        graph = (
            f"[0:v]{chain},split[head][body];[1:v]{tail}[out];"
            f"[head]trim=end_frame={d}[in];[body]trim=start_frame={d},setpts=PTS-STARTPTS[rest];"
            f"[out][in]xfade=transition={seg.kind}:duration={d / s.video_fps:.6f}:offset=0,format=yuv420p[mix];"
            f"[mix][rest]concat=n=2:v=1:a=0,{FINISH}[v]"
        )
    else:
        graph = f"[0:v]{chain},{FINISH}[v]"
    return [
        *args,
        "-filter_complex", graph, "-map", "[v]", "-frames:v", str(span.frames),
        *video_codec_args(s), "-an", "-sn", "-dn", "-map_metadata", "-1", str(dest),
    ]  # fmt: skip


def _input(source: Source, frames: int, fps: int) -> list[str]:
    """``-i`` for ``source``, looped when its first ``frames`` outlast a provider clip by > 1 s."""
    if isinstance(source, VideoSource) and frames / fps - source.seconds > LOOP_ABOVE_SECONDS:
        return ["-stream_loop", "-1", "-i", str(source.path)]
    return ["-i", str(source.path)]


def source_chain(source: Source, span: Span, offset: int, count: int, s: StageSettings) -> str:
    """Filters producing frames ``[offset, offset + count)`` of ``source`` laid over ``span``."""
    width, height = s.frame_size
    fps = s.video_fps
    if isinstance(source, StillSource):
        return motion_filter(source.motion, span.beats, width, height, fps, span.frames, offset, count)
    return (
        f"fps={fps},scale={width}:{height}:force_original_aspect_ratio=increase:"
        f"out_color_matrix=bt709:out_range=tv,crop={width}:{height},setsar=1,format=yuv420p,"
        f"tpad=stop=-1:stop_mode=clone,trim=start_frame={offset}:end_frame={offset + count},setpts=PTS-STARTPTS"
    )


def motion_filter(  # noqa: PLR0917 - the motion's parameters, in order
    motion: str,
    beats: tuple[float, ...] | list[float],
    width: int,
    height: int,
    fps: int,
    frames: int,
    offset: int = 0,
    count: int | None = None,
) -> str:
    """zoompan over a still (a zoom or pan across ``frames``) with scale pulses and an eq
    brightness flash on each beat; emits frames ``[offset, offset + count)`` of that motion.

    The still is converted to YUV once and zoompan emits every frame from it (``d=count``);
    frames past ``frames`` continue the motion (a transition's outgoing side).
    """
    count = frames if count is None else count
    begin, end = offset / fps - 1.0, (offset + count) / fps  # a pulse fades within a second
    pulses = [b for b in beats if begin <= b < end][:MAX_PULSES]
    t = f"((on+{offset})/{fps})"
    zpulse = "+".join(f"0.035*exp(-9*({t}-{b:.3f}))*gte({t},{b:.3f})" for b in pulses) or "0"
    shift = f"(t+{offset / fps:.6f})" if offset else "t"
    bpulse = "+".join(f"0.12*exp(-10*({shift}-{b:.3f}))*gte({shift},{b:.3f})" for b in pulses) or "0"
    p = f"((on+{offset})/{max(1, frames - 1)})"
    center_x, center_y = "iw/2-(iw/zoom/2)", "ih/2-(ih/zoom/2)"
    zoom, x = {
        "zoom_in": (f"1.0+0.18*{p}", center_x),
        "zoom_out": (f"1.18-0.18*{p}", center_x),
        "pan_left": ("1.15", f"(iw-iw/zoom)*(1-{p})"),
        "pan_right": ("1.15", f"(iw-iw/zoom)*{p}"),
    }.get(motion, ("1.06", center_x))
    return (
        f"scale={2 * width}:{2 * height}:out_color_matrix=bt709:out_range=tv,format=yuv420p,setsar=1,"
        f"zoompan=z='{zoom}+{zpulse}':x='{x}':y='{center_y}':d={count}:s={width}x{height}:fps={fps},"
        f"eq=brightness='{bpulse}':eval=frame"
    )
