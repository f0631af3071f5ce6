"""Dependency health as metrics: real Redis and Postgres answer (up 1, a ping time), a closed port
and a server that never replies do not (up 0, the ping bounded), and the background probe stops
on its signal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from montage_common import dependencies
from montage_common.redis import create_redis
from montage_common.web import READY_CHECKS, create_base_app, create_ops_app
from prometheus_client import REGISTRY
from redis.asyncio import Redis


def gauge(name: str, dependency: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"dependency": dependency})


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers (a hung dependency)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_answering_dependencies_are_up_with_a_ping_time(redis: Redis, pool: asyncpg.Pool) -> None:
    assert await dependencies.ping("redis", redis.ping)
    assert await dependencies.ping("postgres", lambda: pool.fetchval("SELECT 1"))
    for name in ("redis", "postgres"):
        assert gauge("montage_dependency_up", name) == 1
        seconds = gauge("montage_dependency_ping_seconds", name)
        assert seconds is not None and 0 < seconds < dependencies.PING_TIMEOUT_SECONDS


async def test_a_closed_port_is_down() -> None:
    client = create_redis("redis://127.0.0.1:1/0")
    try:
        assert not await dependencies.ping("redis", client.ping)
    finally:
        await client.aclose()
    assert gauge("montage_dependency_up", "redis") == 0


async def test_a_dependency_that_never_answers_is_down_within_the_bound(silent_port: int) -> None:
    client = create_redis(f"redis://127.0.0.1:{silent_port}/0")  # no socket timeout: only the bound stops it
    try:
        assert not await asyncio.wait_for(dependencies.ping("redis", client.ping, limit_seconds=0.3), 10)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    assert gauge("montage_dependency_up", "redis") == 0
    seconds = gauge("montage_dependency_ping_seconds", "redis")
    assert seconds is not None and seconds >= 0.3


async def test_the_probe_pings_again_and_stops_on_its_signal(redis: Redis) -> None:
    calls = 0

    async def counted() -> object:
        nonlocal calls
        calls += 1
        return await redis.ping()

    stop = asyncio.Event()
    task = asyncio.create_task(dependencies.probe({"redis": counted, "schema": counted}, stop, 0.01))
    for _ in range(500):  # bounded: until three pings happened
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)  # returns promptly once stopped (the wait is on the event)
    assert calls >= 3
    assert task.done() and task.exception() is None


async def test_the_ops_port_exports_them(redis_url: str) -> None:
    """What Prometheus scrapes: the ops app probes the API app's readiness checks in the background."""
    api = create_base_app("probe-test")
    client_redis = create_redis(redis_url)
    api[READY_CHECKS]["redis"] = client_redis.ping
    dependencies.UP.labels("redis").set(0)
    client = TestClient(TestServer(create_ops_app(api, probe_seconds=0.05), host="127.0.0.1"))
    await client.start_server()
    try:
        text = ""
        for _ in range(200):  # bounded: until the probe has run
            text = await (await client.get("/metrics")).text()
            if 'montage_dependency_up{dependency="redis"} 1.0' in text:
                break
            await asyncio.sleep(0.02)
        assert 'montage_dependency_up{dependency="redis"} 1.0' in text
        assert 'montage_dependency_ping_seconds{dependency="redis"}' in text
    finally:
        await client.close()
        await client_redis.aclose()
