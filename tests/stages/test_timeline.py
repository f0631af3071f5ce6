"""Where clips sit on the song's frame grid, decided from the clips' outcomes as they arrive."""

from __future__ import annotations

import itertools

from montage_contracts.models import ClipPrompt, Transition
from montage_stages.media.timeline import Segment, plan_segments

FPS = 24
BOUNDS = [0.0, 2.0, 4.5, 6.0, 9.51]


def prompts() -> list[ClipPrompt]:
    return [
        ClipPrompt(index=i, prompt="p", start=a, end=b, scene_id="s", beats=[0.0, 0.5])
        for i, (a, b) in enumerate(itertools.pairwise(BOUNDS))
    ]


FADES = {i: Transition(after_clip=i, kind="fade", duration=0.5) for i in range(2)}


def spans(plan: dict[int, Segment]) -> list[tuple[int, int, int]]:
    return [(i, s.span.first, s.span.frames) for i, s in sorted(plan.items())]


def test_rendered_clips_tile_the_frame_grid() -> None:
    plan = plan_segments(prompts(), dict.fromkeys(range(4), True), FADES, FPS)

    assert spans(plan) == [(0, 0, 48), (1, 48, 60), (2, 108, 36), (3, 144, 84)]
    assert sum(s.span.frames for s in plan.values()) == round(9.51 * FPS)
    assert [(s.kind, s.transition_frames) for _, s in sorted(plan.items())] == [
        ("cut", 0),
        ("fade", 12),  # 0.5 s
        ("fade", 12),
        ("cut", 0),  # no transition planned after clip 2
    ]
    assert plan[1].previous == plan[0].span
    assert plan[1].span.beats == (0.0, 0.5)


def test_a_segment_waits_for_the_outcomes_it_depends_on() -> None:
    # clip 1 rendered, clips 0 and 2 pending: its start (is it the first?) and end are unknown
    assert plan_segments(prompts(), {1: True}, FADES, FPS) == {}
    # clip 0 known: clip 1 starts at its own start, but its end waits for clip 2
    assert set(plan_segments(prompts(), {0: True, 1: True}, FADES, FPS)) == {0}
    # a decision never changes once made, as more outcomes arrive
    early = plan_segments(prompts(), {0: True, 1: True, 2: True}, FADES, FPS)
    late = plan_segments(prompts(), dict.fromkeys(range(4), True), FADES, FPS)
    assert all(late[i] == seg for i, seg in early.items())


def test_failed_clips_are_covered_by_their_neighbours() -> None:
    plan = plan_segments(prompts(), {0: False, 1: True, 2: False, 3: True}, FADES, FPS)

    # clip 1 covers clip 0's span (it starts the video) and clip 2's; the beats of both come along
    assert spans(plan) == [(1, 0, 144), (3, 144, 84)]
    assert plan[1].span.beats == (0.0, 0.5, 2.0, 2.5, 4.5, 5.0)
    assert plan[1].kind == "cut" and plan[3].kind == "cut"  # their planned neighbours failed


def test_transitions_are_bounded_by_the_shorter_clip() -> None:
    long = {0: Transition(after_clip=0, kind="dissolve", duration=3.0)}
    short = {0: Transition(after_clip=0, kind="dissolve", duration=0.05)}

    assert plan_segments(prompts(), dict.fromkeys(range(4), True), long, FPS)[1].transition_frames == 21  # 0.45 * 48
    assert plan_segments(prompts(), dict.fromkeys(range(4), True), short, FPS)[1].kind == "cut"
