"""Failover without operator action (issue 15), on the whole stack with real stage workers.

- Redis SIGKILLed with persistence off while jobs run: every endpoint answers 503 or degrades
  (never 500) meanwhile; Redis comes back empty and the running jobs complete — their lost
  tasks are dispatched again by the orchestrator's reconciler from Postgres. (With AOF on, the
  same outage is ``tests/security/test_redis_down.py``.)
- ``SENTINEL FAILOVER`` while jobs run: every service follows the new primary by itself (no
  Montage process restarted) and the jobs complete.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync
from montage_dev.devstack import EmbeddedRedis

from tests.redis.stacks import SentinelSet, call, signed_in, stack_on, submit, wait_stage, wait_status


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "volatile-redis", persistence=False)
    server.start()
    yield server
    server.stop()


def test_redis_killed_without_persistence(
    volatile_redis: EmbeddedRedis, server_database_url: str, song: Path, tmp_path: Path
) -> None:
    with stack_on(server_database_url, tmp_path, {"REDIS_URL": volatile_redis.url}, "volatile") as running:
        asyncio.run(_killed_without_persistence(running.url, volatile_redis, song))


async def _killed_without_persistence(url: str, volatile_redis: EmbeddedRedis, song: Path) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        auth = await signed_in(s, url, "vera")
        jobs = [await submit(s, url, song, auth) for _ in range(2)]
        for job in jobs:
            await wait_stage(s, url, job, auth, {"scene_planner", "reference_generator", "prompt_generator",
                                                 "video_generator", "composer"})  # fmt: skip
        assert volatile_redis.proc is not None
        os.kill(volatile_redis.proc.pid, signal.SIGKILL)
        volatile_redis.proc.wait()

        job = jobs[0]
        probes: list[tuple[str, str]] = [
            ("GET", f"/api/v1/jobs/{job}"),
            ("GET", "/api/v1/jobs"),
            ("POST", f"/api/v1/jobs/{job}/cancel"),
            ("POST", f"/api/v1/jobs/{job}/stream-ticket"),
            ("GET", f"/api/v1/jobs/{job}/stream"),
            ("GET", f"/api/v1/jobs/{job}/download"),
            ("GET", "/api/v1/health"),
        ]
        for method, path in probes:
            status, body = await call(s, method, f"{url}{path}", headers=auth)
            assert status != 500, (method, path, body)
            assert status in (200, 404, 503), (method, path, status, body)

        volatile_redis.start()  # same port, empty: nothing persisted
        finals = [await wait_status(s, url, j, auth, {"completed", "failed"}) for j in jobs]
        assert [f["status"] for f in finals] == ["completed", "completed"], finals
        status, _ = await call(s, "GET", f"{url}/api/v1/health", headers=auth)
        assert status == 200


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    group = SentinelSet(tmp_path / "sentinel")
    group.root.mkdir(parents=True)
    group.start()
    yield group
    group.stop()


async def _sentinel_ready(group: SentinelSet) -> None:
    client = redis_sync.Redis(port=group.sentinel_port)
    try:
        for _ in range(200):  # the Sentinel learns the replica from the primary's INFO
            if client.sentinel_slaves(group.master):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the Sentinel never saw the replica")
    finally:
        client.close()


def test_sentinel_failover_while_jobs_run(
    sentinels: SentinelSet, server_database_url: str, song: Path, tmp_path: Path
) -> None:
    asyncio.run(_sentinel_ready(sentinels))
    assert sentinels.primary is not None and sentinels.replica is not None
    with stack_on(server_database_url, tmp_path, sentinels.env, "sentinel") as running:
        pids = {name: p.pid for name, p in running.stack.procs.items()}
        asyncio.run(_failover_while_jobs_run(running.url, sentinels, song))
        assert {name: p.pid for name, p in running.stack.procs.items()} == pids  # nothing restarted
        assert all(p.poll() is None for p in running.stack.procs.values())
        assert sentinels.replica is not None
        promoted = redis_sync.Redis(port=sentinels.replica.port)
        try:
            assert promoted.role()[0] == b"master"
            assert promoted.dbsize() > 0
        finally:
            promoted.close()


async def _failover_while_jobs_run(url: str, sentinels: SentinelSet, song: Path) -> None:
    assert sentinels.replica is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        auth = await signed_in(s, url, "sam")
        jobs = [await submit(s, url, song, auth) for _ in range(2)]
        for job in jobs:
            await wait_stage(s, url, job, auth, {"reference_generator", "prompt_generator", "video_generator",
                                                 "composer"})  # fmt: skip
        sentinel = redis_sync.Redis(port=sentinels.sentinel_port)
        try:
            assert sentinel.execute_command("SENTINEL", "FAILOVER", sentinels.master)
            new: Any = None
            for _ in range(300):
                new = sentinel.sentinel_get_master_addr_by_name(sentinels.master)
                if new and int(new[1]) == sentinels.replica.port:
                    break
                await asyncio.sleep(0.1)
            assert new and int(new[1]) == sentinels.replica.port, new
        finally:
            sentinel.close()

        finals = [await wait_status(s, url, j, auth, {"completed", "failed"}) for j in jobs]
        assert [f["status"] for f in finals] == ["completed", "completed"], finals
        # and a job submitted after the failover runs on the new primary
        after = await submit(s, url, song, auth)
        assert (await wait_status(s, url, after, auth, {"completed", "failed"}))["status"] == "completed"
