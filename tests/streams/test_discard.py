"""``discard``: a job's messages removed from everywhere they wait (unread, pending, delayed), in
one script per call, and nothing of another job (or another stream's retries) touched."""

from __future__ import annotations

import time
from typing import Any

from montage_contracts.keys import Keys
from montage_streams import Emit, StreamProducer, discard, in_flight
from montage_streams._scripts import entry_fields, netstrings
from redis.asyncio import Redis


async def test_discard_removes_unread_pending_and_delayed_of_one_job_only(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    r: Any = redis
    a, b = keys.stage_stream("a"), keys.stage_stream("b")
    delayed = keys.delayed_zset(a)
    for stream in (a, b):
        await r.xgroup_create(stream, "g", id="0", mkstream=True)
    producer = StreamProducer(redis)
    await producer.emit([Emit(a, b"x", message_id="job1:a:1"), Emit(a, b"y", message_id="job2:a:1")])
    taken = await r.xreadgroup("g", "worker", {a: ">"}, count=2)  # both pending now
    await producer.emit([Emit(b, b"z", message_id="job1:b:1"), Emit(b, b"w", message_id="job2:b:1")])  # unread
    due = int((time.time() + 60) * 1000)
    for mid in ("job1:b:2", "job2:b:2"):
        await r.zadd(delayed, {netstrings([b, *entry_fields(Emit(b, b"r", mid), 2)]): due})
    other = netstrings([keys.results_stream(), *entry_fields(Emit(keys.results_stream(), b"r", "job1:b:3"), 2)])
    await r.zadd(delayed, {other: due})  # a retry of a stream not asked about stays

    sources = [(a, "g"), (b, "g")]
    assert await in_flight(redis, sources, delayed, ["job1", "job2"]) == {"job1", "job2"}
    assert await discard(redis, sources, delayed, ["job1"]) == 3

    assert await in_flight(redis, [(a, "g"), (b, "g")], f"{delayed}:empty", ["job1", "job2"]) == {"job2"}
    assert [f[b"id"] for _, f in await r.xrange(a)] == [b"job2:a:1"]
    assert [f[b"id"] for _, f in await r.xrange(b)] == [b"job2:b:1"]
    assert [p["message_id"] for p in await r.xpending_range(a, "g", "-", "+", 10)] == [taken[0][1][1][0]]
    assert await r.zcard(delayed) == 2 and await r.zscore(delayed, other) is not None
    assert await discard(redis, sources, delayed, ["job1"]) == 0
