"""Time ``POST /api/v1/upload-audio`` of a ~10 MB WAV through the real gateway and orchestrator.

Starts the local stack (devstack.Stack, embedded Redis/Postgres unless REDIS_URL/DATABASE_URL
are set) on free ports, uploads the same 9.9 MB song N times as N different users (the job rate
limit is per user), cancels each job at once so rendering does not load the machine, and prints
the median and worst latency. The spec asks for an answer under 2 s.

    .venv/bin/python bench/upload_10mb.py [N]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import aiohttp
import numpy as np
from montage_dev.devstack import Stack
from montage_gateway.settings import DEV_JWT_SECRET
from montage_gateway.tokens import mint_dev_token

PROMPT = "A slow drift through a glass city at dawn, reflections folding into waves of light"


def write_song(path: Path, seconds: float = 112.0, sr: int = 44100) -> int:
    t = np.arange(int(seconds * sr)) / sr
    beat = (np.sin(2 * np.pi * 2 * t) > 0.98).astype(np.float32)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * beat)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return path.stat().st_size


async def run(n: int) -> None:
    var = Path(tempfile.mkdtemp(prefix="montage-bench-"))
    stack = Stack.on_free_ports(var, extra_env={"LOG_LEVEL": "warning", "REDIS_NAMESPACE": f"bench{int(time.time())}"})
    song = var / "song.wav"
    size = write_song(song)
    stack.start()
    base = f"http://127.0.0.1:{stack.gateway_port}"
    timings: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(n):
                token = mint_dev_token(DEV_JWT_SECRET, f"bench-user-{i}", 600)
                headers = {"Authorization": f"Bearer {token}"}
                form = aiohttp.FormData()
                form.add_field("user_prompt", PROMPT)
                form.add_field("audio_file", song.open("rb"), filename="song.wav", content_type="audio/wav")
                start = time.perf_counter()
                async with http.post(f"{base}/api/v1/upload-audio", data=form, headers=headers) as resp:
                    body = await resp.json()
                    elapsed = time.perf_counter() - start
                assert resp.status == 201, body
                timings.append(elapsed)
                async with http.post(f"{base}/api/v1/jobs/{body['job_id']}/cancel", headers=headers):
                    pass
    finally:
        stack.stop()
    print(f"upload of {size / 1e6:.1f} MB WAV, {n} runs: median {statistics.median(timings) * 1000:.0f} ms, "
          f"max {max(timings) * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 7))
