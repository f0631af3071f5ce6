"""Helpers of the stage tests that look at produced media with ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from montage_stages import ffmpeg


async def decode_errors(path: Path) -> str:
    """ffmpeg's error output when decoding the whole file (empty when it decodes cleanly)."""
    _, err = await ffmpeg.run(["-v", "error", "-i", str(path), "-f", "null", "-"])
    return err.strip()


async def envelope(path: Path, rate: int = 8000, window: float = 0.05) -> np.ndarray:
    """RMS envelope of a file's audio, one value per ``window`` seconds."""
    pcm = await ffmpeg.decode_audio(path, rate)
    hop = int(rate * window)
    n = pcm.size // hop
    return np.sqrt((pcm[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])
