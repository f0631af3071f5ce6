"""Postgres: a pool with a 5 s statement timeout, retry of transient errors, and migrations.

Each service owns its migrations: the numbered ``migrations/*.sql`` files of its package
(``montage_orchestrator``, ``montage_ragnarok``; names are unique across services). They are
applied in name order (by the service at start-up, or by the migrate Job: ``python -m
montage_common.migrate``) under a transaction-scoped advisory lock, so several replicas starting
at once apply each file exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TypeVar

import asyncpg
import structlog

log = structlog.get_logger()

STATEMENT_TIMEOUT_MS = 5000
MIGRATION_LOCK_ID = 0x6D6F6E74  # "mont"
T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond what asyncpg always does (roll back an open
    transaction, drop listener callbacks). The services keep no session state: their advisory
    lock and ``SET LOCAL`` are transaction-scoped, nothing ``LISTEN``s, declares cursors or
    ``SET``s a session variable, so asyncpg's default reset query (``pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL``) would only cost a round trip and a transaction per release.
    """


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, attempts: int = 10) -> asyncpg.Pool:
    """Connect (retrying while the server starts) and return a pool (no reset query on release)."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=STATEMENT_TIMEOUT_MS / 1000 + 1,
                server_settings={"statement_timeout": str(STATEMENT_TIMEOUT_MS)},
                reset=_keep_session,
            )
            assert pool is not None
            return pool
        except TRANSIENT as exc:
            if attempt == attempts:
                raise
            log.warning("db_connect_retry", attempt=attempt, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


async def retrying(fn: Callable[[], Awaitable[T]], *, attempts: int = 3) -> T:
    """Run ``fn`` (a whole transaction), retrying transient connection and serialization errors."""
    delay = 0.05
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except TRANSIENT as exc:
            if attempt == attempts:
                raise
            log.warning("db_retry", attempt=attempt, error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay *= 4
    raise AssertionError("unreachable")


def migration_files(*packages: str) -> list[tuple[str, str]]:
    """``(name, sql)`` of the packages' ``migrations/*.sql``, in name order."""
    files: list[tuple[str, str]] = []
    for package in packages:
        folder = resources.files(package) / "migrations"
        files += [(p.name, p.read_text()) for p in folder.iterdir() if p.name.endswith(".sql")]
    names = [n for n, _ in files]
    if len(names) != len(set(names)):
        raise ValueError(f"migration names must be unique across packages: {sorted(names)}")
    return sorted(files)


async def migrate(pool: asyncpg.Pool, *packages: str) -> list[str]:
    """Apply the packages' pending migrations; returns the names applied by this call."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        for name, sql in migration_files(*packages):
            async with conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = 0")
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = await conn.fetchval("SELECT 1 FROM schema_migrations WHERE name = $1", name)
                if done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
                log.info("migration_applied", name=name)
    return applied


async def missing_migrations(pool: asyncpg.Pool, *packages: str) -> list[str]:
    """The packages' migrations not recorded as applied (all of them before any ran).

    What this code needs of the schema is its own migration files: a pod of a new release is
    ready only once the release's migrations have run, while the previous release's pods (whose
    files are a subset) stay ready through the rollout (migrations only add; docs/operations.md,
    "Releases and migrations").
    """
    wanted = [name for name, _ in migration_files(*packages)]
    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            return wanted
        applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    return [name for name in wanted if name not in applied]


async def wait_for_schema(pool: asyncpg.Pool, *packages: str, limit_seconds: float, poll_seconds: float = 2.0) -> None:
    """Wait (bounded) until every migration of ``packages`` is applied (by the migration Job).

    Raises :class:`SchemaNotCurrent` naming what is missing when ``limit_seconds`` pass first.
    """
    deadline = time.monotonic() + limit_seconds
    while missing := await missing_migrations(pool, *packages):
        if time.monotonic() >= deadline:
            raise SchemaNotCurrent(missing)
        log.info("schema_waiting", missing=missing)
        await asyncio.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


class SchemaNotCurrent(Exception):
    """The database lacks migrations this code needs (the migration Job has not run them yet)."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"migrations not applied yet: {', '.join(missing)}")
        self.missing = missing
