"""Redis memory per 1,000 jobs: run real jobs through the whole stack and weigh what stays.

Starts an embedded Redis and Postgres and every service (as ``make up`` does, low-resolution
render settings), measures ``used_memory`` once the stack is idle, runs ``--jobs`` jobs with a
``--seconds`` song to completion, waits for the status cache to expire (30 s), measures again,
and weighs the keys a job leaves: its event log (kept 24 h), its entries in the stage streams
and the results stream (kept until trimmed at ~100 000 entries per stream).

    .venv/bin/python bench/redis_memory.py --jobs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis as redis_sync
from montage_cli.client import MontageClient
from montage_dev.devstack import EmbeddedRedis, ServiceSpec, Stack

PROMPT = "A neon city at night, rain on the streets, a lone dancer moving to the beat of the song."
ENV = {
    "VIDEO_WIDTH": "160",
    "VIDEO_HEIGHT": "90",
    "VIDEO_FPS": "12",
    "X264_PRESET": "ultrafast",
    "AUDIO_BITRATE": "64k",
    "LOG_FORMAT": "json",
    "JOB_RATE_LIMIT": "100000",  # one user submits every job
}


class QuietStack(Stack):
    def spawn(self, spec: ServiceSpec, color: str = "36") -> subprocess.Popen[bytes]:
        self.specs[spec.name] = spec
        log = (self.var_dir / f"{spec.name}.log").open("ab")
        proc = subprocess.Popen(spec.argv, env=spec.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[spec.name] = proc
        return proc


def used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


async def run_jobs(url: str, song: Path, n: int) -> list[str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        async with s.post(f"{url}/api/v1/dev/token", json={"user_id": "bench-memory"}) as r:
            token = (await r.json())["access_token"]
        client = MontageClient(s, url, token)
        jobs = [str((await client.upload(song, PROMPT))["job_id"]) for _ in range(n)]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            states = [(await client.job(j))["status"] for j in jobs]
            if all(st in ("completed", "failed") for st in states):
                assert all(st == "completed" for st in states), states
                return jobs
            await asyncio.sleep(1)
    raise RuntimeError("jobs did not finish")


async def healthy(url: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        for _ in range(600):
            try:
                async with s.get(f"{url}/api/v1/health") as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError("stack not healthy")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=30.0, help="song length")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-redis-memory-"))
    song = root / "song.mp3"
    subprocess.run([sys.executable, "-m", "montage_stages.media.synth", str(song), "--seconds", str(args.seconds)],
                   check=True, capture_output=True)  # fmt: skip
    redis_server = EmbeddedRedis(root / "redis")
    redis_server.start()
    stack = QuietStack.on_free_ports(root, env={**os.environ, "REDIS_URL": redis_server.url}, extra_env=ENV)
    client = redis_sync.Redis(port=redis_server.port)
    try:
        stack.start(timeout=90)
        url = f"http://127.0.0.1:{stack.gateway_port}"
        asyncio.run(healthy(url))
        time.sleep(2)
        before = used(client)
        jobs = asyncio.run(run_jobs(url, song, args.jobs))
        time.sleep(35)  # the status cache (30 s) and request-guard windows expire
        after = used(client)
        logs = sum(int(client.memory_usage(f"{{montage}}:job_events:{j}") or 0) for j in jobs)
        streams = {k.decode(): int(client.memory_usage(k) or 0) for k in client.scan_iter(match="{montage}:*")
                   if client.type(k) == b"stream" and b"job_events" not in k}  # fmt: skip
        per_k = (after - before) / args.jobs * 1000
        print(f"{args.jobs} jobs of a {args.seconds:.0f} s song")
        print(f"used_memory before {before / 1e6:.2f} MB, after {after / 1e6:.2f} MB")
        print(f"per 1,000 jobs: {per_k / 1e6:.1f} MB (event logs alone {logs / args.jobs * 1000 / 1e6:.1f} MB)")
        print("pipeline streams now: " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in sorted(streams.items())))
    finally:
        client.close()
        stack.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
