"""What the suite checks in a downloaded video: it decodes, and its audio is the uploaded song."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

RATE = 8000


@dataclass(frozen=True)
class Probe:
    duration: float
    video_codec: str
    audio_codec: str
    width: int
    height: int


def ffmpeg() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def probe(path: Path) -> Probe:
    """Streams and duration, read from ``ffmpeg -i``."""
    out = subprocess.run(
        [ffmpeg(), "-hide_banner", "-i", str(path)], check=False, capture_output=True, text=True, timeout=30
    )
    text = out.stderr
    dur = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    video = re.search(r"Stream #.*Video: (\w+).*?, (\d{2,5})x(\d{2,5})", text)
    audio = re.search(r"Stream #.*Audio: (\w+)", text)
    assert dur and video and audio, f"not a video with audio:\n{text}"
    h, m, s = dur.groups()
    return Probe(int(h) * 3600 + int(m) * 60 + float(s), video.group(1), audio.group(1),
                 int(video.group(2)), int(video.group(3)))  # fmt: skip


def decodes(path: Path) -> str:
    """Decode every frame and sample; returns ffmpeg's error output (empty when clean)."""
    out = subprocess.run([ffmpeg(), "-v", "error", "-i", str(path), "-f", "null", "-"],
                         check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    return out.stderr.strip() if out.returncode == 0 else f"exit {out.returncode}: {out.stderr.strip()}"


def _pcm(path: Path) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg(), "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(RATE), "-f", "f32le", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    samples: np.ndarray = np.frombuffer(raw, dtype=np.float32)
    return samples


def audio_similarity(song: Path, video: Path, max_lag_seconds: float = 0.3) -> float:
    """Peak normalized cross-correlation of the two waveforms (8 kHz mono) within ± ``max_lag_seconds``.

    About 1.0 for the same song through an AAC encode; about 0.1 for a different song.
    """
    a, b = _pcm(song).astype(np.float64), _pcm(video).astype(np.float64)
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    lag = int(max_lag_seconds * RATE)
    window = np.concatenate([corr[-lag:], corr[: lag + 1]])
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b))) or 1.0
    return float(window.max() / denom)
