"""Where each rendered clip sits in the final video, decided before any frame is encoded.

The video is the song: clip ``i`` owns the frames ``[round(start_i * fps), round(start_j * fps))``
where ``j`` is the next clip that rendered, so the clips tile the song's frame grid exactly and
the composer only has to join them. A failed clip's span goes to the clip before it (the first
clip's to the one after), as the composer did before clips were encoded in their final form.

A transition of ``d`` frames between clip ``i`` and clip ``i+1`` lives in clip ``i+1``: its first
``d`` frames ``xfade`` from clip ``i`` continued past its cut into clip ``i+1`` itself, so the
incoming clip still starts on the beat and no clip needs another clip's encoded frames.

Transitions come from the plan: the orchestrator puts them in video_generator's input
(``VideoGeneratorInput.transitions``, built by the stage's spec in ``montage_contracts.pipeline``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog
from montage_contracts.models import ClipPrompt, Transition

log = structlog.get_logger()

ROOM = 0.45  # a transition takes at most this share of the shorter of the two clips
MIN_TRANSITION_SECONDS = 0.1  # shorter transitions become cuts


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
