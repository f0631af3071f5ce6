"""``montage queues`` lists every partition's streams, video_generator's clip stream included, on a real Redis."""

from __future__ import annotations

from montage_cli.queues import format_table, snapshot
from montage_contracts.keys import Keys
from montage_contracts.pipeline import STAGES
from redis.asyncio import Redis


async def test_every_partition_and_the_clip_streams_are_listed(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace, partitions=2)
    composer = keys.stage_stream("composer", 1)
    await redis.xgroup_create(composer, keys.stage_group("composer"), id="0", mkstream=True)
    await redis.xadd(composer, {"a": "1"})
    await redis.xgroup_create(keys.clip_stream(1), keys.clip_group(), id="0", mkstream=True)
    for _ in range(3):
        await redis.xadd(keys.clip_stream(1), {"a": "1"})
    await redis.zadd(keys.delayed_zsets()[1], {"retry": 1})

    snap = await snapshot(redis, keys)
    rows = {q["stream"]: q for q in snap["queues"]}
    assert set(rows) == {f"{s}#{p}" for s in (*STAGES, "clips", "results") for p in (0, 1)}
    assert (rows["composer#1"]["length"], rows["composer#1"]["lag"]) == (1, 1)
    assert (rows["composer#0"]["length"], rows["composer#0"]["lag"]) == (0, None)  # no group there yet
    assert (rows["clips#1"]["length"], rows["clips#1"]["lag"], rows["clips#1"]["group"]) == (3, 3, "clips")
    assert snap["delayed_retries"] == 1
    assert "clips#1" in format_table(snap)


async def test_one_partition_keeps_the_plain_names(redis: Redis, namespace: str) -> None:
    snap = await snapshot(redis, Keys(namespace))
    assert [q["stream"] for q in snap["queues"]] == [*STAGES, "clips", "results"]
