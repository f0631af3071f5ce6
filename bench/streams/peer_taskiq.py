"""taskiq-redis's streams broker (RedisStreamBroker): six chained tasks, 2 workers x 3 async tasks.

Worker: ``taskiq worker peer_taskiq:broker --workers 1 --max-async-tasks 3`` (one per process).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from common import DONE, STAGES, parse, produce
from redis.asyncio import Redis
from taskiq_redis import RedisStreamBroker

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
broker = RedisStreamBroker(URL)
_done = Redis.from_url(URL)
tasks: list[Any] = []


def _make(i: int) -> Any:
    async def run(t0: float) -> None:
        if i == STAGES - 1:
            await _done.xadd(DONE, {"m": repr(t0), "t1": repr(time.time())})
        else:
            await tasks[i + 1].kiq(t0)

    return broker.task(task_name=f"s{i}")(run)


tasks.extend(_make(i) for i in range(STAGES))


async def producer(jobs: int, rate: float) -> None:
    await broker.startup()
    await produce(jobs, rate, tasks[0].kiq)
    await broker.shutdown()


if __name__ == "__main__":
    a = parse()
    asyncio.run(producer(a.jobs, a.rate))
