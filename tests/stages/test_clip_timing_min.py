"""A short song still gets the three clips the orchestrator requires, cut on beats."""

from __future__ import annotations

import itertools

from montage_contracts.models import AudioAnalysis
from montage_stages.media.clip_timing import clip_bounds


def test_short_song_gets_three_clips_on_beats() -> None:
    beats = [0.5 * i for i in range(1, 24)]  # 120 BPM, 12 s
    audio = AudioAnalysis(duration=12.0, tempo=120.0, beat_timestamps=beats, downbeats=beats[::4])
    bounds = clip_bounds(audio, 3.0, 8.0)
    assert len(bounds) - 1 >= 3
    assert bounds[0] == 0.0 and bounds[-1] == 12.0
    assert all(b in beats for b in bounds[1:-1])
    assert all(b > a for a, b in itertools.pairwise(bounds))


def test_long_song_is_unchanged_by_the_minimum() -> None:
    beats = [0.5 * i for i in range(1, 120)]
    audio = AudioAnalysis(duration=60.0, tempo=120.0, beat_timestamps=beats, downbeats=beats[::4])
    bounds = clip_bounds(audio, 3.0, 8.0)
    assert len(bounds) - 1 >= 8
