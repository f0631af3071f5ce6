"""BullMQ's Python package: one queue and one Worker (concurrency 3) per stage per process."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from bullmq import Queue, Worker
from common import DONE, STAGES, parse, produce
from redis.asyncio import Redis

OPTS = {"removeOnComplete": True, "removeOnFail": True}


async def worker(url: str, concurrency: int) -> None:
    done = Redis.from_url(url)
    queues = [Queue(f"s{i}", {"connection": url}) for i in range(STAGES)]

    def proc(i: int) -> Any:
        async def run(job: Any, _token: str) -> None:
            if i == STAGES - 1:
                await done.xadd(DONE, {"m": repr(job.data["t0"]), "t1": repr(time.time())})
            else:
                await queues[i + 1].add("j", job.data, OPTS)

        return run

    workers = [Worker(f"s{i}", proc(i), {"connection": url, "concurrency": concurrency}) for i in range(STAGES)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for w in workers:
        await w.close()
    for q in queues:
        await q.close()


async def producer(url: str, jobs: int, rate: float) -> None:
    q = Queue("s0", {"connection": url})
    await produce(jobs, rate, lambda t0: q.add("j", {"t0": t0}, OPTS))
    await q.close()


if __name__ == "__main__":
    a = parse()
    asyncio.run(worker(a.url, a.concurrency) if a.role == "worker" else producer(a.url, a.jobs, a.rate))
