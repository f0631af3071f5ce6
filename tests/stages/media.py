"""Helpers of the stage tests that look at produced media with ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from montage_stages.media import ffmpeg


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


async def frame_count(path: Path) -> int:
    """Frames of the first video stream, counted by decoding every one of them."""
    out, _ = await ffmpeg.run(["-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-"])
    return sum(1 for line in out.decode().splitlines() if line and not line.startswith("#"))


async def packet_hashes(path: Path, stream: str = "v") -> list[str]:
    """MD5 of each packet of the first video (or ``stream="a"``: audio) stream as stored, without
    decoding: equal lists mean byte-identical streams."""
    args = ["-v", "error", "-i", str(path), "-map", f"0:{stream}:0", "-c", "copy"]
    out, _ = await ffmpeg.run([*args, "-f", "framemd5", "-"])
    return [line.rsplit(",", 1)[1].strip() for line in out.decode().splitlines() if line and not line.startswith("#")]


async def stream_lines(path: Path) -> list[str]:
    """ffmpeg's description of each stream ("Video: h264 (High) ...", "Audio: aac (LC) ...")."""
    _, err = await ffmpeg.run(["-v", "info", "-i", str(path), "-map", "0", "-c", "copy", "-f", "null", "-"])
    return [line.strip() for line in err.splitlines() if line.strip().startswith("Stream #0:") and "->" not in line]


async def frame_colours(path: Path) -> np.ndarray:
    """The mean RGB colour of every frame, shape (frames, 3)."""
    args = ["-v", "error", "-i", str(path), "-map", "0:v:0", "-vf", "scale=4:4"]
    out, _ = await ffmpeg.run([*args, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    frames = np.frombuffer(out, dtype=np.uint8).reshape(-1, 16, 3)
    return frames.astype(np.float64).mean(axis=1)
