"""Where clips start and end: on the song's beats (downbeats preferred), cut at every section change.

Clip lengths stay within [min, max] seconds and shrink as the music gets louder (energetic passages
get faster cutting).
"""

from __future__ import annotations

import bisect

from montage_contracts.models import AudioAnalysis
from montage_contracts.pipeline import MIN_CLIPS


def energy_at(audio: AudioAnalysis, t: float) -> float:
    if not audio.energy:
        return 0.5
    i = min(len(audio.energy) - 1, max(0, int(t * audio.energy_rate)))
    return audio.energy[i]


def nearest(grid: list[float], t: float) -> float:
    if not grid:
        return t
    i = bisect.bisect_left(grid, t)
    cands = grid[max(0, i - 1) : i + 1]
    return min(cands, key=lambda g: abs(g - t))


def clip_bounds(audio: AudioAnalysis, min_len: float, max_len: float) -> list[float]:
    """Boundaries ``[0, c1, ..., duration]``; every inner ``c`` is a beat time when the song has beats."""
    duration = audio.duration
    beats = sorted(audio.beat_timestamps)
    grid = sorted(audio.downbeats) or beats
    forced = sorted({nearest(beats, s.start) for s in audio.sections if s.start > 0})
    forced = [f for f in forced if min_len / 2 <= f <= duration - min_len / 2]
    bounds = [0.0]
    for end in [*forced, duration]:
        cur = bounds[-1]
        if end - cur < min_len / 2:  # too short to be its own clip: fold into the previous one
            continue
        for _ in range(1000):  # bounded: every step advances by at least min_len
            if end - cur <= max_len:
                break
            target = cur + _target_len(energy_at(audio, cur), min_len, max_len)
            hi = min(cur + max_len, end - min_len)
            cands = [g for g in grid if cur + min_len <= g <= hi] or [b for b in beats if cur + min_len <= b <= hi]
            if not cands:
                cands = [cur + min(max_len, (end - cur) / 2)] if not beats else []
            if not cands:
                break
            cur = min(cands, key=lambda g: abs(g - target))
            bounds.append(round(cur, 4))
        bounds.append(round(end, 4))
    if bounds[-1] < duration:
        bounds[-1] = round(duration, 4)
    return ensure_min_clips(bounds, beats)


# The orchestrator fails a job with fewer than 3 clips, so a short song still gets 3.
MIN_SPLIT_SECONDS = 0.5


def ensure_min_clips(bounds: list[float], beats: list[float], n: int = MIN_CLIPS) -> list[float]:
    """Split the longest clip (on the beat nearest its middle) until there are ``n`` clips."""
    out = list(bounds)
    for _ in range(n):  # bounded: each round adds one boundary or stops
        if len(out) - 1 >= n:
            break
        i = max(range(len(out) - 1), key=lambda k: out[k + 1] - out[k])
        lo, hi = out[i], out[i + 1]
        if hi - lo < 2 * MIN_SPLIT_SECONDS:
            break
        inside = [b for b in beats if lo + MIN_SPLIT_SECONDS <= b <= hi - MIN_SPLIT_SECONDS]
        mid = (lo + hi) / 2
        cut = min(inside, key=lambda b: abs(b - mid)) if inside else mid
        out.insert(i + 1, round(cut, 4))
    return out


def _target_len(energy: float, min_len: float, max_len: float) -> float:
    """Loud passages cut faster: energy 1 → min length, energy 0 → max length."""
    e = min(1.0, max(0.0, energy))
    return float(max_len - (max_len - min_len) * e**0.7)
