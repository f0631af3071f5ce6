"""The ceiling: XREADGROUP -> XADD -> XACK per stage and nothing else (no claims, retries, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time

from common import DONE, STAGES, parse, produce
from redis.asyncio import Redis
from redis.exceptions import ResponseError


def stage(i: int) -> str:
    return f"bare:s{i}"


async def loop_stage(redis: Redis, i: int, count: int, stop: asyncio.Event) -> None:
    src, group, me = stage(i), f"g{i}", f"{socket.gethostname()}-{id(stop)}"
    with contextlib.suppress(ResponseError):
        await redis.xgroup_create(src, group, id="0", mkstream=True)
    while not stop.is_set():
        resp = await redis.xreadgroup(group, me, {src: ">"}, count=count, block=1000)
        if not resp:
            continue
        pipe = redis.pipeline(transaction=False)
        for entry_id, fields in resp[0][1]:
            if i == STAGES - 1:
                pipe.xadd(DONE, {"m": fields[b"m"], "t1": repr(time.time())})
            else:
                pipe.xadd(stage(i + 1), {"m": fields[b"m"]})
            pipe.xack(src, group, entry_id)
        await pipe.execute()


async def worker(url: str, concurrency: int) -> None:
    redis = Redis.from_url(url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.gather(*(loop_stage(redis, i, concurrency, stop) for i in range(STAGES)))
    await redis.aclose()


async def producer(url: str, jobs: int, rate: float) -> None:
    redis = Redis.from_url(url)
    await produce(jobs, rate, lambda t0: redis.xadd(stage(0), {"m": repr(t0)}))
    await redis.aclose()


if __name__ == "__main__":
    a = parse()
    asyncio.run(worker(a.url, a.concurrency) if a.role == "worker" else producer(a.url, a.jobs, a.rate))
