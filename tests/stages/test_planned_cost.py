"""The pre-flight plan (``montage_contracts.pricing``) against what the stages really do.

- the planned clip count against the scene planner's, on real songs of 10 s to 2 minutes and
  several tempos: within a quarter (plus one clip) of it;
- the planned stills against the plan's scenes and characters;
- the planned encode compute of a clip against the compute price a clip reserves (one rule).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from montage_contracts import pricing
from montage_stages.media import synth
from montage_stages.providers.costing import clip_encode_usd
from montage_stages.runtime.settings import StageSettings
from montage_stages.stages.audio_parser import SAMPLE_RATE, analyse
from montage_stages.stages.scene_planner import local_plan

PROMPT = "A lone dancer in a neon city at night, rain on glass, flickering signs"


@pytest.mark.parametrize(("seconds", "bpm"), [(10, 120), (20, 96), (30, 140), (60, 120), (120, 110)])
def test_planned_clips_and_stills_match_the_planner(seconds: float, bpm: float) -> None:
    samples = np.asarray(synth.song(seconds, bpm, sr=SAMPLE_RATE), dtype=np.float32)
    plan = local_plan(PROMPT, analyse(samples if samples.ndim == 1 else samples.mean(axis=1), SAMPLE_RATE))
    s = StageSettings()
    planned = pricing.planned_clips(seconds, s.clip_min_seconds, s.clip_max_seconds)
    actual = len(plan.clip_scripts)
    assert abs(planned - actual) <= math.ceil(0.25 * actual) + 1, (seconds, bpm, actual, planned)
    stills = len(plan.scenes) + len(plan.characters)
    assert abs(pricing.planned_stills(seconds) - stills) <= 1, (seconds, stills)


def test_a_clip_reserves_what_the_plan_counts_for_its_encode() -> None:
    s = StageSettings(local_compute_rate_usd_per_second=1.0)
    card = s.price_card
    assert clip_encode_usd(s, 6.0) == pricing.compute_usd(card, pricing.encode_seconds(card, 6.0))
    # 640x360 at 24 fps: about one compute second per second of clip (measured, docs/providers.md)
    assert 0.8 <= pricing.encode_seconds(card, 1.0) <= 1.2
