"""The media the stand-ins serve: real MP4 clips, ffmpeg's test pattern (RAGNAROK's and Runway's
outputs)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile


async def pattern_mp4(width: int, height: int, fps: int, seconds: float) -> bytes:
    """An H.264 MP4 (yuv420p, fast start) of ffmpeg's ``testsrc2`` at that size and rate, ``seconds`` long."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    with tempfile.TemporaryDirectory(prefix="fake-clip-") as tmp:
        out = f"{tmp}/clip.mp4"
        proc = await asyncio.create_subprocess_exec(
            exe, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-y", out,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {err.decode(errors='replace')[-300:]}")
        with open(out, "rb") as f:
            return f.read()
