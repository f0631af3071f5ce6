"""The per-user event log on a real 3-primary Redis Cluster: a job's log lives in its partition's
slot, its user's log in the user's own slot (another node here), and the copy between them (one
script in the user's slot: XADD, HSET, SPUBLISH) works and is heard live through the gateway's
sharded subscriber. Needs Redis 7 (sharded pub/sub)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from montage_common.events import event_emit
from montage_common.redis import RedisTarget, create_redis
from montage_common.user_events import UserLog, parse_user_published, replay_user
from montage_contracts.api import MessageData, ProgressData
from montage_contracts.keys import Keys
from montage_dev.devstack import EmbeddedCluster
from montage_gateway.pubsub import make_subscriber
from montage_streams import StreamProducer

from tests.redis.stacks import redis_version, three_primaries

pytestmark = pytest.mark.skipif(redis_version() < (7, 0), reason="Redis Cluster with sharded pub/sub needs Redis 7")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    with three_primaries(tmp_path / "cluster", kill=True) as c:  # nothing to keep
        yield c


def _node_of(cluster: EmbeddedCluster, key: str) -> int:
    """The port of the primary holding ``key`` (from the cluster's slot map)."""
    client = redis_sync.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        return int(client.get_node_from_key(key).port)
    finally:
        client.close()


async def test_user_log_copy_and_live_channel_on_a_cluster(cluster: EmbeddedCluster) -> None:
    keys = Keys("montage", partitions=3, sharded_events=True)
    job = "6f1c2b4e-9a57-4d1f-8a3e-2f0b5c7d9e11"
    # a user whose slot is on another primary than the job's partition
    user = next(
        f"user-{n}"
        for n in range(100)
        if _node_of(cluster, keys.user_events_stream(f"user-{n}")) != _node_of(cluster, keys.job_events_stream(job))
    )
    target = RedisTarget(cluster.url, cluster=True)
    redis = create_redis(target)
    heard: list[bytes] = []
    subscriber = make_subscriber(target, lambda _channel, data: heard.append(data), lambda: None)
    listening = asyncio.create_task(subscriber.run())
    try:
        await subscriber.subscribe(keys.user_events_channel(user).encode(), wait_seconds=10)
        datas = [ProgressData(progress=20, estimated_remaining=9), MessageData(text="hi", stage="composer")]
        await StreamProducer(redis).emit([event_emit(keys, job, d) for d in datas])
        log = UserLog(redis, keys)
        assert await log.relay(user, job) == 2
        assert await log.relay(user, job) == 0
        events = await replay_user(redis, keys, user)
        assert [(e.job_id, e.event.data) for e in events] == [(job, d) for d in datas]
        async with asyncio.timeout(10):
            while len(heard) < 2:
                await asyncio.sleep(0.05)
        assert [parse_user_published(h).entry_id for h in heard] == [e.entry_id for e in events]
    finally:
        subscriber.close()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await redis.aclose()
    # the user's log is on the node owning the user's slot, the job's log on its partition's
    user_node, job_node = (
        _node_of(cluster, keys.user_events_stream(user)),
        _node_of(cluster, keys.job_events_stream(job)),
    )
    assert user_node != job_node
    for port, names in ((user_node, (keys.user_events_stream(user), keys.user_event_cursors(user))),
                        (job_node, (keys.job_events_stream(job),))):  # fmt: skip
        client = redis_sync.Redis(port=port)
        try:
            assert client.exists(*names) == len(names)
        finally:
            client.close()
