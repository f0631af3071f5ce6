"""Tempo and beats from an onset envelope: autocorrelation tempo, dynamic-programming beat tracking.

Tempo: the normalised autocorrelation of the onset envelope, summed with its value at twice the
lag (a two-tooth comb, which favours the true beat over its double), weighted by a log-normal prior
around 120 BPM. Beats: Ellis' dynamic program (onset strength plus a penalty for intervals that
stray from the period), refined to the nearest onset peak; the final tempo is the slope of beat
time against beat number, so it is not limited by the frame rate.
"""

from __future__ import annotations

import numpy as np

MIN_BPM = 60.0
MAX_BPM = 200.0
PRIOR_BPM = 120.0
TIGHTNESS = 100.0


def pulse_envelope(onset: np.ndarray, low: np.ndarray) -> np.ndarray:
    """The envelope tempo and beats are tracked on: full-band flux plus twice the low-band flux.

    Hi-hats dominate a full-band flux and repeat every eighth note; the low band (kick, bass,
    snare body) marks the beat itself, which keeps the tracker off 2/3 and 3/2 multiples.
    """
    return np.asarray(onset + 2.0 * low)


def estimate_tempo(onset: np.ndarray, rate: float) -> float:
    """Tempo in BPM from the onset envelope (``rate`` frames per second)."""
    n = onset.size
    if n < 4 * rate:
        return PRIOR_BPM
    x = onset - onset.mean()
    spec = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec))[:n]
    ac = ac / np.maximum(1, n - np.arange(n))
    ac = np.maximum(ac, 0.0)
    k = np.arange(-3, 4)
    ac = np.convolve(ac, np.exp(-0.5 * k**2), mode="same")  # peaks narrower than a frame get a width
    lo = int(rate * 60 / MAX_BPM)
    hi = min(int(rate * 60 / MIN_BPM) + 1, (n - 1) // 2)
    lags = np.arange(lo, hi)
    score = ac[lags] + 0.5 * ac[2 * lags]
    bpm = 60.0 * rate / lags
    prior = np.exp(-0.5 * np.log2(bpm / PRIOR_BPM) ** 2)
    best = int(np.argmax(score * prior))
    lag = float(lags[best])
    if 0 < best < lags.size - 1:  # parabolic refinement
        a, b, c = score[best - 1 : best + 2]
        denom = a - 2 * b + c
        if denom < 0:
            lag += 0.5 * (a - c) / denom
    return 60.0 * rate / lag


def track_beats(onset: np.ndarray, rate: float, bpm: float) -> np.ndarray:
    """Beat frames (float, refined) by dynamic programming at ``bpm``."""
    period = 60.0 * rate / bpm
    n = onset.size
    if n < 2 * period:
        return np.zeros(0)
    sigma = period / 32
    k = np.arange(-int(period), int(period) + 1)
    local = np.convolve(onset, np.exp(-0.5 * (k / sigma) ** 2), mode="same")
    window = np.arange(-round(2 * period), -round(period / 2) + 1)
    txwt = -TIGHTNESS * np.log(-window / period) ** 2
    cum = np.zeros(n)
    back = np.full(n, -1, dtype=np.int64)
    first = True
    for i in range(n):  # bounded: one pass over the frames
        z = i + window
        valid = z >= 0
        if not valid.any():
            cum[i] = local[i]
            continue
        cand = cum[z[valid]] + txwt[valid]
        j = int(np.argmax(cand))
        cum[i] = local[i] + cand[j]
        if first and local[i] < 0.01 * local.max():
            back[i] = -1
        else:
            back[i] = z[valid][j]
            first = False
    peaks = _local_maxima(cum)
    if peaks.size == 0:
        return np.zeros(0)
    thresh = 0.5 * np.median(cum[peaks])
    end = int(peaks[cum[peaks] >= thresh][-1])
    path = [end]
    while back[path[-1]] >= 0 and len(path) <= n:
        path.append(int(back[path[-1]]))
    frames = np.array(path[::-1], dtype=np.int64)
    frames = _trim_weak(frames, local)
    return _refine(frames, onset, int(max(1, round(0.03 * rate))))


def _local_maxima(x: np.ndarray) -> np.ndarray:
    if x.size < 3:
        return np.zeros(0, dtype=np.int64)
    mid = (x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:])
    return np.flatnonzero(mid) + 1


def _trim_weak(frames: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Drop leading and trailing beats in silence (weaker than half the RMS beat strength)."""
    if frames.size == 0:
        return frames
    strength = local[frames]
    thresh = 0.5 * np.sqrt(np.mean(strength**2))
    strong = np.flatnonzero(strength >= thresh)
    if strong.size == 0:
        return frames
    return frames[strong[0] : strong[-1] + 1]


def _refine(frames: np.ndarray, onset: np.ndarray, radius: int) -> np.ndarray:
    """Move each beat to the strongest onset within ``radius`` frames, with sub-frame interpolation."""
    out = np.empty(frames.size)
    n = onset.size
    for i, f in enumerate(frames):
        lo, hi = max(0, f - radius), min(n, f + radius + 1)
        seg = onset[lo:hi]
        if seg.size == 0 or seg.max() <= 0:
            out[i] = f
            continue
        j = int(np.argmax(seg))
        pos = float(lo + j)
        if 0 < j < seg.size - 1:
            a, b, c = seg[j - 1 : j + 2]
            denom = a - 2 * b + c
            if denom < 0:
                pos += 0.5 * (a - c) / denom
        out[i] = pos
    return out


def tempo_from_beats(times: np.ndarray, fallback: float) -> float:
    """Slope of beat time against beat number (robust to a few missed beats)."""
    if times.size < 4:
        return fallback
    period = float(np.median(np.diff(times)))
    idx = np.round((times - times[0]) / period)
    slope = float(np.polyfit(idx, times, 1)[0])
    return 60.0 / slope if slope > 0 else fallback


def downbeat_phase(beat_frames: np.ndarray, accent: np.ndarray, harmonic_change: np.ndarray) -> int:
    """Which of every 4 beats starts a bar: the phase with the strongest low-end and harmonic accents."""
    if beat_frames.size < 8:
        return 0
    idx = np.clip(np.round(beat_frames).astype(int), 0, accent.size - 1)
    a = accent[idx] / (accent[idx].mean() + 1e-9)
    h = harmonic_change / (harmonic_change.mean() + 1e-9)
    score = [float(a[p::4].mean() + h[p::4].mean()) for p in range(4)]
    return int(np.argmax(score))
