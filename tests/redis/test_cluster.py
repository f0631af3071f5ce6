"""Redis Cluster (issue 15): the end-to-end main path (upload → stream → download) on a
3-primary cluster with ``REDIS_PARTITIONS=6``, and the pipeline's keys on every primary.

Needs Redis 7 (sharded pub/sub): skipped on an older redis-server (``make pytest`` installs
Debian's when none is on PATH).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis as redis_sync
from montage_cli.client import MontageClient
from montage_contracts.keys import Keys
from montage_dev.devstack import EmbeddedCluster

from tests.e2e.flows import run_job
from tests.redis.stacks import redis_version, stack_on, three_primaries
from tests.stack import dev_token

PARTITIONS = 6

pytestmark = pytest.mark.skipif(redis_version() < (7, 0), reason="Redis Cluster with sharded pub/sub needs Redis 7")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    with three_primaries(tmp_path / "cluster") as c:
        yield c


def test_main_path_on_a_three_primary_cluster(
    cluster: EmbeddedCluster, server_database_url: str, song: Path, tmp_path: Path
) -> None:
    env = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "REDIS_PARTITIONS": str(PARTITIONS)}
    with stack_on(server_database_url, tmp_path, env, "cluster") as running:

        async def go() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=90)) as session:
                client = MontageClient(session, running.url, await dev_token(session, running.url, "cleo"))
                jobs = await asyncio.gather(*(run_job(client, song, "cleo", tmp_path / f"out{i}") for i in range(2)))
            for job in jobs:
                assert job.events[-1].event == "completed", [e.event for e in job.events]
                assert job.video is not None and job.video.stat().st_size > 1000
                assert {"stage_update", "progress", "completed"} <= {e.event for e in job.events}

        asyncio.run(go())

    # Every primary holds pipeline keys: its partitions' stage streams, results, event logs.
    keys = Keys("montage", PARTITIONS, sharded_events=True)
    tags = {keys.partition_tag(p) for p in keys.all_partitions}
    per_node: list[set[str]] = []
    for node in cluster.nodes:
        client = redis_sync.Redis(port=node.port)
        try:
            names = {k.decode() for k in client.scan_iter(match="{montage:p*", count=1000)}
        finally:
            client.close()
        per_node.append({Keys.tag_of(n) for n in names} & tags)
        assert any(":stage:" in n for n in names), (node.port, sorted(names)[:10])
        assert any(n.endswith(":results") for n in names), (node.port, sorted(names)[:10])
    assert all(len(t) == PARTITIONS // 3 for t in per_node), per_node  # two partitions per primary
    assert set().union(*per_node) == tags
