"""arq: six chained functions on one queue, 2 workers x max_jobs 3; poll_delay from ARQ_POLL_DELAY."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, ClassVar

from arq import create_pool, run_worker
from arq.connections import RedisSettings
from common import DONE, STAGES, parse, produce

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _make(i: int) -> Any:
    async def run(ctx: dict[str, Any], t0: float) -> None:
        if i == STAGES - 1:
            await ctx["redis"].xadd(DONE, {"m": repr(t0), "t1": repr(time.time())})
        else:
            await ctx["redis"].enqueue_job(f"s{i + 1}", t0)

    run.__qualname__ = run.__name__ = f"s{i}"
    return run


class WorkerSettings:
    functions: ClassVar[list[Any]] = [_make(i) for i in range(STAGES)]
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = 3
    poll_delay = float(os.environ.get("ARQ_POLL_DELAY", "0.5"))
    keep_result = 0
    handle_signals = True


async def producer(jobs: int, rate: float) -> None:
    pool = await create_pool(RedisSettings.from_dsn(URL))
    await produce(jobs, rate, lambda t0: pool.enqueue_job("s0", t0))
    await pool.aclose()


if __name__ == "__main__":
    a = parse()
    if a.role == "worker":
        run_worker(WorkerSettings)  # type: ignore[arg-type]
    else:
        asyncio.run(producer(a.jobs, a.rate))
