"""Short-time spectra and the features built on them: onset envelopes, chroma, centroid, RMS."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ONSET_FFT = 512
ONSET_HOP = 128
CHROMA_FFT = 4096
CHROMA_HOP = 2048


def stft_magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| with centred frames (frame ``t`` is centred on sample ``t * hop``), shape (frames, bins)."""
    padded = np.pad(x.astype(np.float32), n_fft // 2, mode="reflect" if x.size > n_fft else "constant")
    frames = sliding_window_view(padded, n_fft)[::hop]
    window = np.hanning(n_fft).astype(np.float32)
    out = np.empty((frames.shape[0], n_fft // 2 + 1), dtype=np.float32)
    step = 4096
    for i in range(0, frames.shape[0], step):  # bounded memory for long songs
        out[i : i + step] = np.abs(np.fft.rfft(frames[i : i + step] * window, axis=1))
    return out


@dataclass(frozen=True, slots=True)
class OnsetFeatures:
    rate: float  # frames per second
    onset: np.ndarray  # full-band spectral flux, detrended, >= 0
    low: np.ndarray  # flux below ~200 Hz (kick drums, bass): downbeat accents
    centroid: np.ndarray  # spectral centroid in Hz per frame


def onset_features(x: np.ndarray, sr: int) -> OnsetFeatures:
    mag = stft_magnitude(x, ONSET_FFT, ONSET_HOP)
    logmag = np.log1p(100.0 * mag)
    diff = np.maximum(0.0, np.diff(logmag, axis=0, prepend=logmag[:1]))
    low_bins = max(2, int(200 * ONSET_FFT / sr))
    rate = sr / ONSET_HOP
    freqs = np.fft.rfftfreq(ONSET_FFT, 1.0 / sr).astype(np.float32)
    power = mag.sum(axis=1) + 1e-9
    return OnsetFeatures(
        rate=rate,
        onset=_detrend(diff.sum(axis=1), int(rate)),
        low=_detrend(diff[:, :low_bins].sum(axis=1), int(rate)),
        centroid=(mag @ freqs) / power,
    )


def _detrend(flux: np.ndarray, width: int) -> np.ndarray:
    """Subtract a moving average and half-wave rectify; scaled to unit standard deviation."""
    kernel = np.ones(width) / width
    padded = np.pad(flux, width, mode="edge")  # no false onsets where the song starts or ends
    mean = np.convolve(padded, kernel, mode="same")[width:-width]
    out = np.maximum(0.0, flux - mean)
    std = float(out.std())
    return np.asarray(out / std if std > 0 else out)


def chroma(x: np.ndarray, sr: int) -> tuple[np.ndarray, float]:
    """12-bin pitch-class energy per frame (C = 0) and the frame rate."""
    mag = stft_magnitude(x, CHROMA_FFT, CHROMA_HOP) ** 2
    freqs = np.fft.rfftfreq(CHROMA_FFT, 1.0 / sr)
    keep = (freqs >= 55) & (freqs <= 2000)
    pitch = np.round(12 * np.log2(freqs[keep] / 440.0) + 69).astype(int) % 12
    proj = np.zeros((keep.sum(), 12), dtype=np.float32)
    proj[np.arange(keep.sum()), pitch] = 1.0
    return mag[:, keep] @ proj, sr / CHROMA_HOP


def rms_curve(x: np.ndarray, sr: int, rate: float) -> np.ndarray:
    """Root-mean-square level in consecutive windows of ``1 / rate`` seconds."""
    hop = max(1, round(sr / rate))
    n = int(np.ceil(x.size / hop))
    padded = np.zeros(n * hop, dtype=np.float64)
    padded[: x.size] = x
    return np.asarray(np.sqrt((padded.reshape(n, hop) ** 2).mean(axis=1)))
