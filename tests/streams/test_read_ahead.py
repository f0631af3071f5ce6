"""Read-ahead: entries a consumer holds beyond its running handlers are claimed like running
ones (renewed while it lives, reclaimed when it dies, released on stop), never run twice, and
held only while its handlers are quick."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Sequence

from montage_streams import Delivery, Emit, StreamConsumer

from tests.streams.conftest import Harness, wait_until

Start = Callable[[StreamConsumer], Awaitable[object]]


async def pending_of(h: Harness, consumer: str) -> list[dict[str, object]]:
    rows = await h.redis.xpending_range(h.stream, h.group, "-", "+", 100, consumername=consumer)
    return [{"id": p["message_id"].decode(), "deliveries": int(p["times_delivered"])} for p in rows]


async def test_read_ahead_entries_are_renewed_while_the_consumer_lives(harness: Harness, running: Start) -> None:
    gate = asyncio.Event()
    seen: list[tuple[str, str, int]] = []

    def handler_for(name: str) -> Callable[[Delivery], Awaitable[Sequence[Emit]]]:
        async def handler(d: Delivery) -> Sequence[Emit]:
            seen.append((name, d.message_id, d.delivery_count))
            if d.message_id != "warm":
                await gate.wait()
            return [Emit(harness.out_stream, json.dumps({"mid": d.message_id}).encode(), message_id=d.message_id)]

        return handler

    def consumer(name: str, concurrency: int) -> StreamConsumer:
        return StreamConsumer(harness.redis, harness.stream, harness.group, handler_for(name), harness.keys,
                              consumer=name, concurrency=concurrency, block_ms=100, claim_idle_ms=600,
                              read_ahead=4, read_ahead_wait=60.0)  # fmt: skip

    await running(consumer("a", 1))
    await harness.produce("warm")  # a learns how long its handler takes: quick, so it reads ahead
    await harness.wait_outputs({"warm"})
    mids = [f"m{i}" for i in range(5)]
    for mid in mids:
        await harness.produce(mid)

    async def a_holds_all() -> bool:
        return len(await pending_of(harness, "a")) == 5  # one running (concurrency 1), four read ahead

    await wait_until(a_holds_all, "a to read ahead")
    assert [m for _, m, _ in seen] == ["warm", "m0"]

    # b reads and reclaims every 300 ms (claim_idle_ms / 2) while a's handler is stuck for about
    # five claim timeouts: a renews what it read ahead, so b takes none of it.
    await running(consumer("b", 3))
    for _ in range(15):
        await asyncio.sleep(0.2)
        assert {str(p["id"]) for p in await pending_of(harness, "b")} == set()
    assert len(await pending_of(harness, "a")) == 5
    assert [m for _, m, _ in seen] == ["warm", "m0"]

    gate.set()
    assert await harness.wait_outputs({"warm", *mids}) == dict.fromkeys(["warm", *mids], 1)
    assert seen == [("a", m, 1) for m in ["warm", *mids]]
    assert await harness.pending() == 0


def _quick_then_stuck() -> list[str]:
    return ["q0", "q1", "q2", "q3"]


async def _a_reads_ahead_behind_a_stuck_entry(harness: Harness, *args: str) -> None:
    await harness.spawn("a", "--concurrency", "1", "--read-ahead", "8", "--read-ahead-wait", "60", *args)
    await harness.produce("warm")
    await harness.wait_outputs({"warm"})
    await harness.produce("stuck", sleep=60, sleep_runs=1)
    for mid in _quick_then_stuck():
        await harness.produce(mid)

    async def a_holds_all() -> bool:
        return len(await pending_of(harness, "a")) == 5

    await wait_until(a_holds_all, "a to hold the stuck entry and four read ahead")
    assert [r["mid"] for r in await harness.log()] == ["warm", "stuck"]


async def test_read_ahead_entries_of_a_dead_consumer_are_reclaimed_once(harness: Harness) -> None:
    await _a_reads_ahead_behind_a_stuck_entry(harness)
    await harness.spawn("b")
    harness.signal("a", signal.SIGKILL)

    mids = ["warm", "stuck", *_quick_then_stuck()]
    assert await harness.wait_outputs(set(mids)) == dict.fromkeys(mids, 1)
    done = {o["mid"]: o for o in await harness.outputs()}
    assert {m: done[m]["consumer"] for m in mids[1:]} == dict.fromkeys(mids[1:], "b")
    assert all(int(done[m]["deliveries"]) >= 2 for m in mids[1:])  # reclaimed from a
    assert [await harness.runs(m) for m in mids] == [1, 2, 1, 1, 1, 1]  # a never ran the read-ahead ones
    assert await harness.pending() == 0


async def test_read_ahead_entries_are_released_on_stop_and_not_lost(harness: Harness) -> None:
    await _a_reads_ahead_behind_a_stuck_entry(harness, "--grace", "0.3")
    harness.signal("a", signal.SIGTERM)
    assert await harness.wait_exit("a") == 0
    assert await harness.out_counts() == {"warm": 1}
    held = {str(p["id"]): p["deliveries"] for p in await pending_of(harness, "a")}
    entries = {f[b"id"].decode(): e.decode() for e, f in await harness.redis.xrange(harness.stream)}
    # the cancelled handler's entry stays pending as delivered; the read-ahead ones are released
    # with the delivery that never reached a handler taken back
    assert held == {entries["stuck"]: 1} | {entries[m]: 0 for m in _quick_then_stuck()}

    await harness.spawn("b")
    mids = ["warm", "stuck", *_quick_then_stuck()]
    assert await harness.wait_outputs(set(mids)) == dict.fromkeys(mids, 1)
    done = {o["mid"]: o for o in await harness.outputs()}
    assert {m: done[m]["consumer"] for m in mids[1:]} == dict.fromkeys(mids[1:], "b")
    assert {m: int(done[m]["deliveries"]) for m in _quick_then_stuck()} == dict.fromkeys(_quick_then_stuck(), 1)
    assert int(done["stuck"]["deliveries"]) == 2
    assert [await harness.runs(m) for m in mids] == [1, 2, 1, 1, 1, 1]
    assert await harness.pending() == 0


async def test_slow_handlers_do_not_read_ahead(harness: Harness, running: Start) -> None:
    held: list[int] = []

    async def slow(d: Delivery) -> Sequence[Emit]:
        held.append(len(await pending_of(harness, "a")))
        await asyncio.sleep(0.2)  # 4x read_ahead_wait: not one entry fits in the read-ahead
        return [Emit(harness.out_stream, json.dumps({"mid": d.message_id}).encode(), message_id=d.message_id)]

    a = StreamConsumer(harness.redis, harness.stream, harness.group, slow, harness.keys, consumer="a",
                       concurrency=1, block_ms=100, read_ahead=8, read_ahead_wait=0.05)  # fmt: skip
    await running(a)
    mids = [f"s{i}" for i in range(4)]
    for mid in mids:
        await harness.produce(mid)
    assert await harness.wait_outputs(set(mids)) == dict.fromkeys(mids, 1)
    assert held == [1, 1, 1, 1]  # only the running entry: the rest stayed for other consumers
