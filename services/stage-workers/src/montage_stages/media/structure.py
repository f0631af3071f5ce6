"""Song structure and character: sections from bar-level novelty, the energy curve, a mood estimate."""

from __future__ import annotations

import numpy as np
from montage_contracts.models import Mood, Section

# Krumhansl-Kessler key profiles (C major / C minor).
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MIN_SECTION_BARS = 4


def energy_curve(rms: np.ndarray) -> list[float]:
    """RMS windows scaled to 0..1 by the loudest (99th percentile) level."""
    if rms.size == 0:
        return []
    top = float(np.percentile(rms, 99)) or 1.0
    return [round(float(v), 4) for v in np.clip(rms / top, 0.0, 1.0)]


def mode_major(chroma_mean: np.ndarray) -> tuple[bool, float]:
    """(is major, confidence 0..1) by correlating the pitch-class profile with rotated key profiles."""
    if not np.any(chroma_mean):
        return True, 0.0
    best_major = max(float(np.corrcoef(chroma_mean, np.roll(_MAJOR, k))[0, 1]) for k in range(12))
    best_minor = max(float(np.corrcoef(chroma_mean, np.roll(_MINOR, k))[0, 1]) for k in range(12))
    return best_major >= best_minor, min(1.0, abs(best_major - best_minor) * 5)


def estimate_mood(tempo: float, loudness: float, brightness: float, major: bool, confidence: float) -> Mood:
    """Arousal from tempo, loudness and brightness; valence from mode and brightness."""
    t = np.clip((tempo - 60.0) / 120.0, 0.0, 1.0)
    arousal = float(np.clip(0.4 * t + 0.4 * loudness + 0.2 * brightness, 0.0, 1.0))
    mode = 0.5 + (0.25 if major else -0.25) * (0.4 + 0.6 * confidence)
    valence = float(np.clip(0.75 * mode + 0.25 * brightness, 0.0, 1.0))
    if arousal >= 0.55:
        name = ("energetic" if arousal >= 0.7 else "uplifting") if valence >= 0.5 else "intense"
    else:
        name = "calm" if valence >= 0.5 else "melancholic"
    return Mood(name=name, valence=round(valence, 3), arousal=round(arousal, 3))


def sections(bar_times: np.ndarray, duration: float, bar_chroma: np.ndarray, bar_energy: np.ndarray) -> list[Section]:
    """Segment at bar-level novelty peaks and label the segments intro/verse/chorus/bridge/outro.

    ``bar_times`` are the downbeats (bar starts); ``bar_chroma`` (bars, 12) and ``bar_energy`` (0..1)
    describe each bar. Novelty at bar ``b`` compares the few bars before with the few after: the
    level change in dB (3 dB counts 1) plus the harmonic change (relative to its typical size).
    """
    n = bar_times.size
    if n < 2 * MIN_SECTION_BARS:
        return [Section(start=0.0, end=round(duration, 3), label="verse", energy=_mean(bar_energy))]
    db = 20 * np.log10(np.maximum(bar_energy, 1e-4))
    unit = bar_chroma / (np.linalg.norm(bar_chroma, axis=1, keepdims=True) + 1e-9)
    half = 2 if n < 24 else 4
    nov_e, nov_c = np.zeros(n), np.zeros(n)
    for b in range(2, n - 1):
        lo, hi = max(0, b - half), min(n - 1, b + half)  # the last (partial) bar is left out
        nov_e[b] = abs(float(db[b:hi].mean() - db[lo:b].mean()))
        before, after = unit[lo:b].mean(axis=0), unit[b:hi].mean(axis=0)
        nov_c[b] = 1 - float(before @ after) / (np.linalg.norm(before) * np.linalg.norm(after) + 1e-9)
    typical = float(np.median(nov_c[2 : n - 1])) if n > 3 else 0.0
    novelty = nov_e / 3.0 + nov_c / max(1e-3, 4 * typical)
    max_sections = max(2, int(duration // 12))
    cuts: list[int] = []
    for b in np.argsort(-novelty):  # strongest first
        if len(cuts) >= max_sections - 1 or novelty[b] < 1.0:
            break
        if not novelty[b] >= max(novelty[b - 1], novelty[min(n - 1, b + 1)]):
            continue
        if b < 2 or b > n - 2 or any(abs(int(b) - c) < MIN_SECTION_BARS for c in cuts):
            continue
        cuts.append(int(b))
    bounds = [0, *sorted(cuts), n]
    starts = [0.0] + [float(bar_times[b]) for b in bounds[1:-1]]
    ends = [*starts[1:], duration]
    energies = [_mean(bar_energy[bounds[i] : bounds[i + 1]]) for i in range(len(starts))]
    labels = _labels(energies, [unit[bounds[i] : bounds[i + 1]].mean(axis=0) for i in range(len(starts))])
    return [
        Section(start=round(s, 3), end=round(e, 3), label=lab, energy=round(en, 3))
        for s, e, lab, en in zip(starts, ends, labels, energies, strict=True)
    ]


def _labels(energies: list[float], centroids: list[np.ndarray]) -> list[str]:
    k = len(energies)
    labels = ["verse"] * k
    if k == 1:
        return labels
    median = float(np.median(energies))
    inner = list(range(k))
    if k >= 3 and energies[0] <= median:
        labels[0] = "intro"
        inner.remove(0)
    if k >= 3 and energies[-1] <= median:
        labels[-1] = "outro"
        inner.remove(k - 1)
    if not inner:
        return labels
    inner_median = float(np.median([energies[i] for i in inner]))
    for i in inner:
        if energies[i] > inner_median or (len(inner) == 1 and energies[i] >= median):
            labels[i] = "chorus"
    verses = [i for i in inner if labels[i] == "verse"]
    late = [i for i in verses if i >= k // 2]
    if len(inner) >= 4 and late:
        ref = np.mean([centroids[i] for i in inner], axis=0)
        labels[max(late, key=lambda i: float(np.linalg.norm(centroids[i] - ref)))] = "bridge"
    return labels


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0
