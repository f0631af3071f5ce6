"""Montage's stream runtime: six stages, one StreamConsumer per stage per process, defaults on."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Sequence

from common import DONE, STAGES, parse, produce
from montage_common.redis import create_redis
from montage_contracts.keys import Keys

try:  # a "montage-base" checkout (BENCH_BASE_SRC) from before the runtime became its own package
    from montage_common.streams import Delivery, Emit, StreamConsumer, StreamProducer  # type: ignore[no-redef]
except ImportError:
    from montage_streams import Delivery, Emit, StreamConsumer, StreamProducer

KEYS = Keys("bench")


def stage(i: int) -> str:
    return KEYS.stage_stream(f"s{i}")


async def worker(url: str, concurrency: int) -> None:
    redis = create_redis(url)

    def handler_for(i: int):  # type: ignore[no-untyped-def]
        if i == STAGES - 1:

            async def last(d: Delivery) -> Sequence[Emit]:
                return [Emit(DONE, d.payload, d.message_id, extra=(("t1", repr(time.time())),))]

            return last
        nxt = stage(i + 1)

        async def handler(d: Delivery) -> Sequence[Emit]:
            return [Emit(nxt, d.payload, d.message_id)]

        return handler

    consumers = [
        StreamConsumer(redis, stage(i), f"g{i}", handler_for(i), KEYS, concurrency=concurrency) for i in range(STAGES)
    ]

    def stop_all() -> None:
        for c in consumers:
            c.stop()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_all)
    await asyncio.gather(*(c.run() for c in consumers))
    await redis.aclose()


async def producer(url: str, jobs: int, rate: float) -> None:
    redis = create_redis(url)
    p = StreamProducer(redis)
    first = stage(0)
    await produce(jobs, rate, lambda t0: p.emit([Emit(first, repr(t0).encode())]))
    await redis.aclose()


if __name__ == "__main__":
    a = parse()
    asyncio.run(worker(a.url, a.concurrency) if a.role == "worker" else producer(a.url, a.jobs, a.rate))
