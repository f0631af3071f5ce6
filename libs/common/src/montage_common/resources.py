"""Resource contexts (``app.cleanup_ctx``) every service with Postgres or Redis uses the same way.

Each stores its resource under its ``AppKey``, registers its readiness check, and closes it when
the app stops (contexts stop in the reverse order they started).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from montage_common import db
from montage_common.redis import create_redis, ready, target_of
from montage_common.settings import CommonSettings
from montage_common.web import READY_CHECKS

POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool", asyncpg.Pool)
REDIS: web.AppKey[Redis] = web.AppKey("redis", Redis)
Context = Callable[[web.Application], AsyncIterator[None]]


def postgres(
    database_url: str,
    *,
    pool_size: int,
    migrations: str | None = None,
    schema: str | None = None,
    schema_wait_seconds: float = 300.0,
) -> Context:
    """A pool; with ``migrations`` (a package owning ``migrations/*.sql``) they are applied first.

    With ``schema`` (that package, when the migration Job applies them instead) the service waits,
    at most ``schema_wait_seconds``, until every one of its migrations is recorded, and ``/readyz``
    reports ``schema`` not ready until then: a new release's pods neither take traffic nor start
    their background work on the previous release's schema. Past the bound start-up fails (the
    pod restarts and waits again).
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(database_url, max_size=pool_size)
        try:
            if migrations:
                await db.migrate(pool, migrations)
            app[POOL] = pool
            app[READY_CHECKS]["postgres"] = lambda: pool.fetchval("SELECT 1")
            if schema:
                app[READY_CHECKS]["schema"] = schema_check(pool, schema)
                await db.wait_for_schema(pool, schema, limit_seconds=schema_wait_seconds)
            yield
        finally:
            await pool.close()

    return ctx


def schema_check(pool: asyncpg.Pool, package: str) -> Callable[[], Awaitable[None]]:
    """A readiness check: raises while a migration of ``package`` is missing (then remembers it is
    current: migrations are never removed)."""
    current = False

    async def check() -> None:
        nonlocal current
        if current:
            return
        missing = await db.missing_migrations(pool, package)
        if missing:
            raise db.SchemaNotCurrent(missing)
        current = True

    return check


def redis_client(settings: CommonSettings, **options: float) -> Context:
    """The deployment's Redis (one server, Sentinels or a cluster), connected before the app starts."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        redis = create_redis(target_of(settings), **options)  # type: ignore[arg-type]
        try:
            await ready(redis)
            app[REDIS] = redis
            app[READY_CHECKS]["redis"] = redis.ping
            yield
        finally:
            await redis.aclose()

    return ctx
