"""Where each rendered clip sits in the final video, decided before any frame is encoded.

The video is the song: clip ``i`` owns the frames ``[round(start_i * fps), round(start_j * fps))``
where ``j`` is the next clip that rendered, so the clips tile the song's frame grid exactly and
the composer only has to join them. A failed clip's span goes to the clip before it (the first
clip's to the one after), as the composer did before clips were encoded in their final form.

A transition of ``d`` frames between clip ``i`` and clip ``i+1`` lives in clip ``i+1``: its first
``d`` frames ``xfade`` from clip ``i`` continued past its cut into clip ``i+1`` itself, so the
incoming clip still starts on the beat and no clip needs another clip's encoded frames.

Transitions come from the plan, which video_generator's input does not carry: prompt_generator
stores them next to the clips (:func:`store_layout`, ``video-clips/{job_id}/layout.json``) and
video_generator reads them back (:func:`load_layout`). A missing or mismatched layout means
hard cuts only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import structlog
from montage_common.models import ClipPrompt, ScenePlan, Transition
from montage_common.storage import layout

from montage_stages.context import StageContext

log = structlog.get_logger()

ROOM = 0.45  # a transition takes at most this share of the shorter of the two clips
MIN_TRANSITION_SECONDS = 0.1  # shorter transitions become cuts


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    """The plan's clip boundaries and transitions, as prompt_generator saw them."""

    clips: list[tuple[int, float, float]]  # (index, start, end)
    transitions: list[Transition]


def layout_key(job_id: str) -> str:
    return layout.clip_work_file(job_id, "layout.json")


async def store_layout(ctx: StageContext, job_id: str, plan: ScenePlan) -> None:
    """Best effort: without a layout the clips are cut, so a failed write only loses the transitions."""
    layout = Layout(clips=[(c.index, c.start, c.end) for c in plan.clip_scripts], transitions=plan.transitions)
    try:
        await ctx.storage.put_bytes(layout_key(job_id), msgspec.json.encode(layout), "application/json")
    except Exception as exc:
        log.warning("layout_not_stored", job_id=job_id, error=f"{type(exc).__name__}: {exc}"[:300])


async def load_layout(ctx: StageContext, job_id: str, prompts: Sequence[ClipPrompt]) -> dict[int, Transition]:
    """The plan's transitions by ``after_clip``; empty (hard cuts) when no layout matches ``prompts``."""
    key = layout_key(job_id)
    try:
        if not await ctx.storage.exists(key):
            return {}
        path = await ctx.storage.get_file(key, ctx.scratch("layout") / "layout.json")
        layout = msgspec.json.decode(path.read_bytes(), type=Layout)
    except Exception as exc:  # the layout only adds transitions: without it the clips are cut
        log.warning("layout_unreadable", job_id=job_id, error=f"{type(exc).__name__}: {exc}"[:300])
        return {}
    if [(p.index, p.start, p.end) for p in prompts] != [tuple(c) for c in layout.clips]:
        log.warning("layout_mismatch", job_id=job_id)
        return {}
    return {t.after_clip: t for t in layout.transitions if t.kind != "cut"}


@dataclass(frozen=True, slots=True)
class Span:
    """A clip's place on the song's frame grid (``start``/``end`` in seconds, as planned)."""

    index: int
    first: int  # first frame
    frames: int  # number of frames
    start: float
    end: float
    beats: tuple[float, ...]  # beat times inside the span, seconds from its start


@dataclass(frozen=True, slots=True)
class Segment:
    """One clip file of the final video: its span and the transition it opens with."""

    span: Span
    previous: Span | None = None  # the clip the transition comes from
    kind: str = "cut"
    transition_frames: int = 0


def frame_at(t: float, fps: int) -> int:
    return round(t * fps)


def plan_segments(
    prompts: Sequence[ClipPrompt],
    ok: Mapping[int, bool],
    transitions: Mapping[int, Transition],
    fps: int,
) -> dict[int, Segment]:
    """The segments that can be decided now, by clip index.

    ``ok`` holds the clips whose outcome is known (True rendered, False failed); a clip's segment
    is decided once the outcomes it depends on are known (the clips from the previous rendered
    one to the next rendered one). The result for a clip never changes while ``ok`` only grows.
    """
    order = sorted(prompts, key=lambda p: p.index)
    spans: dict[int, Span] = {}
    for pos, p in enumerate(order):
        if ok.get(p.index) is not True:
            continue
        span = _span(order, pos, ok, fps)
        if span is not None:
            spans[p.index] = span
    out: dict[int, Segment] = {}
    for pos, p in enumerate(order):
        span = spans.get(p.index)
        if span is None:
            continue
        if pos == 0:
            out[p.index] = Segment(span)
            continue
        prev = order[pos - 1]
        state = ok.get(prev.index)
        if state is None:
            continue  # whether a transition comes in depends on the previous clip
        t = transitions.get(prev.index)
        if state is False or t is None or t.kind == "cut" or prev.index + 1 != p.index:
            out[p.index] = Segment(span)
            continue
        prev_span = spans.get(prev.index)
        if prev_span is None:
            continue
        frames = min(round(t.duration * fps), math.floor(ROOM * min(prev_span.frames, span.frames)))
        if frames < max(2, math.ceil(MIN_TRANSITION_SECONDS * fps)):
            out[p.index] = Segment(span)
        else:
            out[p.index] = Segment(span, prev_span, t.kind, frames)
    return out


def _span(order: Sequence[ClipPrompt], pos: int, ok: Mapping[int, bool], fps: int) -> Span | None:
    earlier = [ok.get(q.index) for q in order[:pos]]
    if True in earlier:
        start = order[pos].start
    elif None in earlier:
        return None  # this may yet be the first clip, which starts the video
    else:
        start = order[0].start
    end = order[-1].end
    for q in order[pos + 1 :]:
        state = ok.get(q.index)
        if state is None:
            return None
        if state:
            end = q.start
            break
    first = frame_at(start, fps)
    beats = sorted(
        round(q.start + b - start, 4) for q in order if start <= q.start < end for b in q.beats if q.start + b < end
    )
    return Span(
        index=order[pos].index,
        first=first,
        frames=frame_at(end, fps) - first,
        start=start,
        end=end,
        beats=tuple(beats),
    )


def too_short(prompt: ClipPrompt, fps: int) -> bool:
    """A clip that owns no frame of its own cannot be rendered."""
    return frame_at(prompt.end, fps) <= frame_at(prompt.start, fps)
