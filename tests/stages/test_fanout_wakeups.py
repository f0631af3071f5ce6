"""The clip coordinator never waits for a wake-up that never comes (issue #22): real Redis.

A coordinator (:class:`ClipFanout`) learns of its clips' records from a reader that follows the
records stream. These tests take that reader away (as a cancel redis-py turned into something
else would, or a lost notification), lose a clip entry outright (what a Redis failover or a
restart without persistence does), and hold an entry forever under a consumer that never
finishes it: the coordinator still gets every record, adds the lost entry again, and gives up
with a clear error within its stall bound instead of waiting for the job's timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from montage_contracts.keys import Keys
from montage_contracts.messages import clip_message_id, clip_record_message_id
from montage_stages.stages.clip_fanout import (
    ClipEncoding,
    ClipEntry,
    ClipFanout,
    ClipRecord,
    ClipSource,
    ClipSpan,
    ClipsStalled,
    signed,
)
from montage_streams import Emit, StreamProducer, read_range
from redis.asyncio import Redis

JOB = "job-wakeups"
RESCAN = 0.2  # the coordinator's bound between re-reads in these tests
WAIT = 20.0  # every wait below gives up after this long (a hang fails the test, never the suite)


def entry(index: int) -> ClipEntry:
    return signed(
        ClipEntry(
            job_id=JOB,
            index=index,
            output_key=f"video-clips/{JOB}/clip_{index}.mp4",
            span=ClipSpan(index=index, first=index * 12, frames=12, start=float(index), end=index + 1.0),
            source=ClipSource(key=f"video-clips/{JOB}/sources/clip_{index}.png", kind="still"),
            encoding=ClipEncoding(width=160, height=90, fps=12, x264_preset="ultrafast", x264_crf=30, x264_params=""),
        )
    )


async def write_record(redis: Redis, keys: Keys, e: ClipEntry, *, ok: bool = True) -> None:
    """What a clip worker writes when it finished ``e`` (without the ack of its entry)."""
    record = ClipRecord(job_id=JOB, index=e.index, sig=e.sig, ok=ok, seconds=0.5, worker="test")
    mid = clip_record_message_id(clip_message_id(JOB, e.sig))
    await StreamProducer(redis).emit([Emit(keys.clip_records(JOB), msgspec.json.encode(record), message_id=mid)])


async def clip_entries(redis: Redis, keys: Keys) -> list[ClipEntry]:
    return [msgspec.json.decode(x.payload, type=ClipEntry) for x in await read_range(redis, keys.clip_stream())]


async def until(check: Any, message: str) -> Any:
    for _ in range(int(WAIT / 0.05)):
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(message)


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


async def test_a_record_the_reader_never_delivers_is_found_by_the_rescan(redis: Redis, keys: Keys) -> None:
    fanout = ClipFanout(redis, keys, JOB, rescan_seconds=RESCAN, stall_seconds=60)
    e = entry(0)
    waiting = asyncio.create_task(fanout.render(e))
    try:
        await until(lambda: clip_entries(redis, keys), "the coordinator never added the clip entry")
        # The reader goes away (a cancel that landed mid-command, a connection that died): no
        # record reaches the coordinator through it any more.
        assert fanout._reader is not None
        fanout._closing.set()
        fanout._reader.cancel()
        await asyncio.wait([fanout._reader], timeout=WAIT)
        assert fanout._reader.done()
        await write_record(redis, keys, e)
        record = await asyncio.wait_for(waiting, WAIT)
    finally:
        waiting.cancel()
        await fanout.close()
    assert record.ok and record.sig == e.sig
    assert fanout.found_on_rescan == 1
    assert len(await clip_entries(redis, keys)) == 1  # recorded, so never added again


async def test_a_lost_clip_entry_is_added_again(redis: Redis, keys: Keys) -> None:
    fanout = ClipFanout(redis, keys, JOB, rescan_seconds=RESCAN, stall_seconds=60)
    e = entry(1)
    waiting = asyncio.create_task(fanout.render(e))
    r: Any = redis
    try:
        first = await until(lambda: read_range(redis, keys.clip_stream()), "the clip entry was never added")
        await r.xdel(keys.clip_stream(), first[0].entry_id)  # Redis lost it: no entry, no record

        async def added_again() -> list[Any]:
            return [x for x in await read_range(redis, keys.clip_stream()) if x.entry_id != first[0].entry_id]

        again = await until(added_again, "the lost clip entry was not added again")
        assert msgspec.json.decode(again[0].payload, type=ClipEntry) == e
        assert not waiting.done()
        await write_record(redis, keys, e)
        record = await asyncio.wait_for(waiting, WAIT)
    finally:
        waiting.cancel()
        await fanout.close()
    assert record.ok
    assert fanout.redispatched == {e.sig: 1}


async def test_an_entry_lost_every_time_fails_that_clip_only(redis: Redis, keys: Keys) -> None:
    fanout = ClipFanout(redis, keys, JOB, rescan_seconds=RESCAN, stall_seconds=60)
    e = entry(2)
    waiting = asyncio.create_task(fanout.render(e))
    r: Any = redis
    try:

        async def lose_each() -> bool:
            for x in await read_range(redis, keys.clip_stream()):
                await r.xdel(keys.clip_stream(), x.entry_id)
            return waiting.done()

        await until(lose_each, "the coordinator kept waiting for an entry lost every time")
        record = waiting.result()
    finally:
        waiting.cancel()
        await fanout.close()
    assert not record.ok and "lost" in record.error


async def test_a_clip_held_forever_gives_up_within_the_stall_bound(redis: Redis, keys: Keys) -> None:
    """The entry is taken by a consumer that never finishes it (in flight, so never added again):
    the stage gives up with a clear error after ``stall_seconds``, not at the job's timeout."""
    r: Any = redis
    await r.xgroup_create(keys.clip_stream(), keys.clip_group(), id="0", mkstream=True)
    fanout = ClipFanout(redis, keys, JOB, rescan_seconds=RESCAN, stall_seconds=1.5)
    e = entry(3)
    waiting = asyncio.create_task(fanout.render(e))
    try:

        async def taken() -> Any:
            return await r.xreadgroup(keys.clip_group(), "wedged", {keys.clip_stream(): ">"}, count=1)

        await until(taken, "the clip entry was never added")
        with pytest.raises(ClipsStalled) as stalled:
            await asyncio.wait_for(waiting, WAIT)
    finally:
        waiting.cancel()
        await fanout.close()
    assert "No clip finished for" in stalled.value.message and stalled.value.code == "GENERATION_ERROR"
    assert not stalled.value.retryable
    assert fanout.redispatched == {}  # in flight: waited for, never added twice
