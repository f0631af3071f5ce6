"""The ffmpeg adapter: locate the binary, run it as a killable subprocess, decode audio.

Every ffmpeg failure is translated here into montage_common errors; a cancelled caller kills the
subprocess, so a cancelled job stops rendering at once.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import structlog
from montage_contracts.errors import PipelineError

log = structlog.get_logger()

_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_TIME_RE = re.compile(r"time=\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


class FfmpegError(PipelineError):
    """ffmpeg exited with an error."""


@lru_cache(maxsize=4)
def ffmpeg_exe(configured: str = "") -> str:
    """The configured binary, else the system ffmpeg, else the imageio-ffmpeg one."""
    if configured:
        return configured
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def run(args: list[str], *, exe: str = "", stdin: bytes | None = None) -> tuple[bytes, str]:
    """Run ffmpeg with ``args``; returns (stdout, stderr). Raises FfmpegError on failure."""
    cmd = [ffmpeg_exe(exe), "-hide_banner", "-nostdin", *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(stdin)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    text = err.decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-8:])
        log.warning("ffmpeg_failed", returncode=proc.returncode, stderr=tail[-500:])
        raise FfmpegError(f"ffmpeg failed ({proc.returncode}): {tail[-1500:]}")
    return out, text


async def decode_audio(path: Path, sample_rate: int, *, exe: str = "") -> np.ndarray:
    """Decode any audio file to mono float32 PCM at ``sample_rate``; PipelineError if undecodable."""
    try:
        out, _ = await run(
            ["-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"],
            exe=exe,
        )
    except FfmpegError as exc:
        raise PipelineError(f"audio could not be decoded: {exc.message}") from None
    samples = np.frombuffer(out, dtype=np.float32)
    if samples.size < sample_rate // 2:
        raise PipelineError("audio could not be decoded: no audio samples")
    return samples


async def media_duration(path: Path, *, exe: str = "") -> float:
    """Duration by fully decoding the file (there is no ffprobe): the last ``time=`` of a null run."""
    _, err = await run(["-v", "info", "-stats", "-i", str(path), "-f", "null", "-"], exe=exe)
    times = _TIME_RE.findall(err)
    if times:
        h, m, s = times[-1]
        return int(h) * 3600 + int(m) * 60 + float(s)
    match = _DURATION_RE.search(err)
    if match is None:
        raise FfmpegError(f"no duration for {path.name}")
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)
