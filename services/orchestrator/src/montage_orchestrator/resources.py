"""The orchestrator's resources, one ``cleanup_ctx`` each, started in this order and stopped in
the reverse one: the Postgres pool (and migrations), the Redis client, storage, the container
(``app[DEPS]``), the results consumers (one per partition), the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg
import structlog
from aiohttp import web
from montage_common import db
from montage_common.keys import ORCHESTRATOR_GROUP
from montage_common.redis import create_redis, ready, target_of
from montage_common.storage import Storage, create_storage
from montage_common.web import READY_CHECKS
from montage_streams import RetryPolicy, StreamConsumer
from redis.asyncio import Redis

from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.pipeline import Pipeline
from montage_orchestrator.settings import OrchestratorSettings
from montage_orchestrator.sweeper import Sweeper

log = structlog.get_logger()

POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool", asyncpg.Pool)
REDIS: web.AppKey[Redis] = web.AppKey("redis", Redis)
STORAGE: web.AppKey[Storage] = web.AppKey("storage", Storage)
Context = Callable[[web.Application], AsyncIterator[None]]

# A result whose transaction failed (Postgres blip) is retried quickly, then dead-lettered.
RESULT_RETRY = RetryPolicy(delays=(0.5, 1.0, 2.0, 4.0, 8.0))


def postgres(settings: OrchestratorSettings) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(settings.database_url, max_size=settings.db_pool_size)
        try:
            if settings.run_migrations:
                await db.migrate(pool, "montage_orchestrator")
            app[POOL] = pool
            app[READY_CHECKS]["postgres"] = lambda: pool.fetchval("SELECT 1")
            yield
        finally:
            await pool.close()

    return ctx


def redis_client(settings: OrchestratorSettings) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        redis = create_redis(target_of(settings), socket_timeout=10.0)
        try:
            await ready(redis)
            app[REDIS] = redis
            app[READY_CHECKS]["redis"] = redis.ping
            yield
        finally:
            await redis.aclose()

    return ctx


def storage(settings: OrchestratorSettings) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = create_storage(settings)
        app[STORAGE] = store
        try:
            yield
        finally:
            await store.close()

    return ctx


def container(settings: OrchestratorSettings) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[DEPS] = Deps.build(settings, app[POOL], app[REDIS], app[STORAGE])
        yield

    return ctx


def results_consumers(settings: OrchestratorSettings, replica: str) -> Context:
    """One results consumer per partition (see ``montage_common.keys``), sharing the pipeline."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        deps = app[DEPS]
        pipeline = Pipeline(deps)
        consumers = [
            StreamConsumer(
                redis=deps.redis,
                stream=stream,
                group=ORCHESTRATOR_GROUP,
                handler=pipeline.handle,
                keys=deps.keys,
                consumer=replica,
                concurrency=settings.results_concurrency,
                claim_idle_ms=settings.claim_idle_ms,
                retry=RESULT_RETRY,
                grace=settings.shutdown_grace_seconds,
            )
            for stream in deps.keys.results_streams()
        ]
        tasks = [asyncio.create_task(c.run(), name=f"results-consumer-{i}") for i, c in enumerate(consumers)]
        log.info("orchestrator_started", replica=replica, environment=settings.environment)
        try:
            yield
        finally:
            for c in consumers:
                c.stop()
            await _finish(tasks, settings.shutdown_grace_seconds + 1)

    return ctx


def sweeper(settings: OrchestratorSettings, replica: str) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(Sweeper(app[DEPS], replica).run(stop), name="sweeper")
        try:
            yield
        finally:
            stop.set()
            await _finish([task], settings.shutdown_grace_seconds + 1)

    return ctx


async def _finish(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Wait for ``tasks`` to end by themselves for ``grace`` seconds, then cancel the rest."""
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for t in pending:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
