"""Fixtures for the ragnarok-proxy tests: the fake RAGNAROK and Trinity as real HTTP servers
(in-process), the proxy as a real HTTP server (in-process or as ``python -m montage_ragnarok``
subprocesses), real Postgres and Redis from the shared fixtures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import web
from montage_contracts.keys import Keys
from montage_contracts.messages import RagnarokJobFinished
from montage_contracts.messages import ragnarok_event_decoder as decoder
from montage_dev.devstack import free_port
from montage_dev.fakes import ragnarok as fake_ragnarok_module
from montage_dev.fakes import trinity as fake_trinity_module
from montage_ragnarok.app import create_app
from montage_ragnarok.events import FIELD
from montage_ragnarok.settings import ProxySettings
from redis.asyncio import Redis

from tests import support

SECRET = "test-internal-secret"


def headers(user: str = "user-1", secret: str = SECRET) -> dict[str, str]:
    return support.internal_headers(user, secret)


async def wait_for(check: Callable[[], Awaitable[Any]], *, attempts: int = 300, every: float = 0.1) -> Any:
    return await support.wait_for(check, attempts=attempts, every=every)


@dataclass
class Served:
    url: str
    runner: web.AppRunner
    state: Any = None


async def _serve(app: web.Application) -> tuple[str, web.AppRunner]:
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}", runner


@pytest.fixture
async def fake_ragnarok() -> AsyncIterator[Served]:
    state = fake_ragnarok_module.FakeRagnarok(step_seconds=0.3)
    app, state = fake_ragnarok_module.create_app(state)
    url, runner = await _serve(app)
    yield Served(url, runner, state)
    await runner.cleanup()


@pytest.fixture
async def fake_trinity() -> AsyncIterator[Served]:
    app, state = fake_trinity_module.create_app()
    url, runner = await _serve(app)
    yield Served(url, runner, state)
    await runner.cleanup()


@pytest.fixture
async def parked_jobs(database_url: str) -> None:
    """Stop polling jobs other tests left behind (their fakes are gone); each test starts clean."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE nexus_jobs SET next_poll_at = NULL, lease_owner = NULL, lease_expires_at = NULL"
            " WHERE next_poll_at IS NOT NULL"
        )
    finally:
        await conn.close()


@pytest.fixture
def proxy_settings(
    redis_url: str, database_url: str, namespace: str, fake_ragnarok: Served, fake_trinity: Served, parked_jobs: None
) -> Callable[..., ProxySettings]:
    def make(**overrides: Any) -> ProxySettings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "database_url": database_url,
            "redis_namespace": namespace,
            "internal_secret": SECRET,
            "ragnarok_url": fake_ragnarok.url,
            "trinity_url": fake_trinity.url,
            "ragnarok_timeout_seconds": 0.5,
            "ragnarok_connect_timeout_seconds": 0.5,
            "trinity_timeout_seconds": 0.5,
            "poll_interval_seconds": 0.1,
            "poll_backoff_factor": 1.5,
            "poll_max_interval_seconds": 0.5,
            "poll_tick_seconds": 0.05,
            "lease_seconds": 2.0,
            "shutdown_grace_seconds": 1.0,
            "db_pool_size": 5,
        }
        values.update(overrides)
        return ProxySettings(**values)

    return make


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[[ProxySettings], Awaitable[str]]]:
    """Start the proxy in-process as a real HTTP server; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(settings: ProxySettings) -> str:
        url, runner = await _serve(create_app(settings))
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def proxy(
    start_proxy: Callable[[ProxySettings], Awaitable[str]], proxy_settings: Callable[..., ProxySettings]
) -> str:
    return await start_proxy(proxy_settings())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@dataclass
class Replica:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    ops_url: str = ""  # /healthz, /readyz, /metrics

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class Replicas:
    started: list[Replica] = field(default_factory=list)


@pytest.fixture
async def spawn_replica(tmp_path: Path) -> AsyncIterator[Callable[[ProxySettings, str], Awaitable[Replica]]]:
    """Start ``python -m montage_ragnarok`` as a subprocess, configured by environment only."""
    replicas = Replicas()

    async def spawn(settings: ProxySettings, name: str) -> Replica:
        port, ops_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH")}
        for key, value in msgspec.structs.asdict(settings).items():
            env[key.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        env.update(PORT=str(port), OPS_PORT=str(ops_port), REPLICA_ID=name, LOG_FORMAT="json", PYTHONUNBUFFERED="1")
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "montage_ragnarok"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        replica = Replica(name, f"http://127.0.0.1:{port}", proc, log, f"http://127.0.0.1:{ops_port}")
        replicas.started.append(replica)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:

            async def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited: {log.read_text()[-2000:]}")
                try:
                    async with session.get(f"{replica.ops_url}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, attempts=300, every=0.05)
        return replica

    yield spawn
    for replica in replicas.started:
        if replica.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(replica.proc.pid, signal.SIGTERM)
            try:
                replica.proc.wait(10)
            except subprocess.TimeoutExpired:
                replica.kill()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def ragnarok_events(redis: Redis, keys: Keys) -> list[RagnarokJobFinished]:
    """Every event on the namespace's ragnarok events stream, decoded."""
    entries: Any = await redis.xrange(keys.ragnarok_events_stream())
    return [decoder.decode(fields[FIELD]) for _, fields in entries]
