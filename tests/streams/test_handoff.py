"""Hand-off and bookkeeping: lost claims, own pending entries, deleted entries, safe trimming."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence

from montage_streams import LOST, Delivery, Emit, StreamConsumer

from tests.streams.conftest import Harness, wait_until

Start = Callable[[StreamConsumer], Awaitable[object]]


def forwarding(h: Harness, gate: asyncio.Event | None = None, seen: list[str] | None = None) -> Callable[..., object]:
    async def handler(d: Delivery) -> Sequence[Emit]:
        if seen is not None:
            seen.append(d.message_id)
        if gate is not None:
            await gate.wait()
        return [Emit(h.out_stream, json.dumps({"mid": d.message_id}).encode(), message_id=d.message_id)]

    return handler


async def test_result_of_a_lost_claim_is_discarded(harness: Harness, running: Start) -> None:
    gate, seen = asyncio.Event(), []
    a = StreamConsumer(harness.redis, harness.stream, harness.group, forwarding(harness, gate, seen), harness.keys,
                       consumer="a", block_ms=100)  # type: ignore[arg-type]  # fmt: skip
    await running(a)
    entry = await harness.produce("x")
    await wait_until(lambda: _true(bool(seen)), "the handler to start")
    # another consumer reclaims it (as XAUTOCLAIM would after a long stall of `a`)
    await harness.redis.xclaim(harness.stream, harness.group, "thief", 0, [entry])
    lost_before = LOST.labels(harness.stream, harness.group)._value.get()
    gate.set()
    await wait_until(lambda: _true(LOST.labels(harness.stream, harness.group)._value.get() > lost_before), "lost")
    assert await harness.out_counts() == {}
    (p,) = await harness.redis.xpending_range(harness.stream, harness.group, "-", "+", 10)
    assert p["consumer"] == b"thief"

    # the thief, restarted under its name, finishes its own pending entry first, exactly once
    b = StreamConsumer(harness.redis, harness.stream, harness.group, forwarding(harness), harness.keys,
                       consumer="thief", block_ms=100)  # type: ignore[arg-type]  # fmt: skip
    await running(b)
    assert await harness.wait_outputs({"x"}) == {"x": 1}


async def test_restarted_consumer_processes_its_own_pending_entries_once(harness: Harness, running: Start) -> None:
    mids = [f"m{i}" for i in range(7)]
    for mid in mids:
        await harness.produce(mid)
    await harness.redis.xgroup_create(harness.stream, harness.group, id="0")
    await harness.redis.xreadgroup(harness.group, "c", {harness.stream: ">"}, count=7)  # then "c" crashed
    seen: list[str] = []
    c = StreamConsumer(harness.redis, harness.stream, harness.group, forwarding(harness, seen=seen), harness.keys,
                       consumer="c", concurrency=2, block_ms=100)  # type: ignore[arg-type]  # fmt: skip
    await running(c)
    await harness.produce("new")
    assert await harness.wait_outputs({*mids, "new"}) == dict.fromkeys([*mids, "new"], 1)
    assert sorted(seen) == sorted([*mids, "new"])
    assert await harness.pending() == 0


async def test_entries_deleted_while_pending_are_cleared_on_reclaim(harness: Harness, running: Start) -> None:
    ids = [await harness.produce(f"d{i}") for i in range(3)]
    await harness.redis.xgroup_create(harness.stream, harness.group, id="0")
    await harness.redis.xreadgroup(harness.group, "dead", {harness.stream: ">"}, count=3)
    await harness.redis.xdel(harness.stream, ids[1])
    c = StreamConsumer(harness.redis, harness.stream, harness.group, forwarding(harness), harness.keys,
                       consumer="c", block_ms=100, claim_idle_ms=200)  # type: ignore[arg-type]  # fmt: skip
    await running(c)
    assert await harness.wait_outputs({"d0", "d2"}) == {"d0": 1, "d2": 1}
    await wait_until(lambda: _zero(harness.pending()), "the deleted entry to be acked")


async def test_trimming_never_removes_pending_or_unread_entries(harness: Harness) -> None:
    r, s = harness.redis, harness.stream
    async with r.pipeline(transaction=False) as pipe:
        for i in range(1000):
            pipe.xadd(s, {"id": f"e{i}", "m": b"{}"})
        ids = [i.decode() for i in await pipe.execute()]
    await r.xgroup_create(s, "slow", id="0")
    await r.xgroup_create(s, "idle", id="0")  # reads nothing yet
    await r.xreadgroup("slow", "c", {s: ">"}, count=600)
    await r.xack(s, "slow", *ids[:300])  # pending: ids[300:600]
    c = StreamConsumer(r, s, "slow", forwarding(harness), harness.keys, consumer="m", maxlen=10)  # type: ignore[arg-type]

    await c.maintain()
    assert await r.xlen(s) == 1000  # "idle" has read nothing

    await r.xreadgroup("idle", "c", {s: ">"}, count=800)
    await r.xack(s, "idle", *ids[:800])  # nothing pending; unread from ids[800]
    await c.maintain()
    remaining = [e.decode() for e, _ in await r.xrange(s)]
    assert len(remaining) < 1000  # it does trim
    assert set(ids[300:]) <= set(remaining)  # but keeps everything pending or unread

    await r.xack(s, "slow", *ids[300:600])
    await r.xreadgroup("slow", "c", {s: ">"})
    await r.xack(s, "slow", *ids[600:])
    await r.xreadgroup("idle", "c", {s: ">"})
    await r.xack(s, "idle", *ids[800:])
    await c.maintain()
    assert await r.xlen(s) <= 10 + 100  # about maxlen (whole radix-tree nodes of 100)
    assert [e.decode() for e, _ in await r.xrange(s)][-10:] == ids[-10:]


async def _true(value: bool) -> bool:
    return value


async def _zero(n: Awaitable[int]) -> bool:
    return await n == 0


async def test_overlapping_hand_offs_emit_each_result_once(harness: Harness, running: Start) -> None:
    """Handlers finishing at staggered times keep several hand-off calls in flight at once."""
    mids = [f"m{i}" for i in range(120)]

    async def staggered(d: Delivery) -> Sequence[Emit]:
        await asyncio.sleep((int(d.message_id[1:]) % 4) / 1000)
        return [Emit(harness.out_stream, json.dumps({"mid": d.message_id}).encode(), message_id=d.message_id)]

    for name in ("a", "b"):
        await running(StreamConsumer(harness.redis, harness.stream, harness.group, staggered, harness.keys,
                                     consumer=name, concurrency=3, block_ms=100))  # fmt: skip
    for mid in mids:
        await harness.produce(mid)
    assert await harness.wait_outputs(set(mids)) == dict.fromkeys(mids, 1)
    assert await harness.pending() == 0
