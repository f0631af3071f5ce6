"""Shared by every system's bench module (stdlib only: the peers run in their own venvs)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

STAGES = 6
DONE = "{bench}:done"  # the final stage of every system XADDs {t0, t1} here


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["worker", "produce"])
    p.add_argument("--url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--concurrency", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.0, help="jobs/s; 0 = as fast as possible")
    return p.parse_args()


async def produce(jobs: int, rate: float, send: Callable[[float], Awaitable[object]]) -> None:
    """Send ``jobs`` jobs one after another (each carrying its send time), paced at ``rate``."""
    start = time.perf_counter()
    for i in range(jobs):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await send(time.time())
