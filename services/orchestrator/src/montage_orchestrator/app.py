"""The orchestrator application: resources, the results consumer and the sweeper live in
``app.cleanup_ctx`` and are stopped and awaited on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from montage_common import db
from montage_common.keys import ORCHESTRATOR_GROUP
from montage_common.redis import create_redis, ready, target_of
from montage_common.storage import create_storage
from montage_common.web import READY_CHECKS, create_base_app, internal_only
from montage_streams import RetryPolicy, StreamConsumer

from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.handlers import routes
from montage_orchestrator.pipeline import Pipeline
from montage_orchestrator.settings import OrchestratorSettings
from montage_orchestrator.sweeper import Sweeper

log = structlog.get_logger()

SERVICE = "orchestrator"
# A result whose transaction failed (Postgres blip) is retried quickly, then dead-lettered.
RESULT_RETRY = RetryPolicy(delays=(0.5, 1.0, 2.0, 4.0, 8.0))


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def create_app(settings: OrchestratorSettings) -> web.Application:
    problems = settings.problems()
    if problems:
        raise SystemExit("invalid configuration: " + "; ".join(problems))
    replica = settings.replica_id or default_replica_id()
    # The upload handler streams the body itself; this bound only covers other routes.
    app = create_base_app(SERVICE, client_max_size=settings.max_upload_bytes + 1024**2)
    app.middlewares.append(internal_only(settings.internal_secret))
    app.router.add_routes(routes())

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(settings.database_url, max_size=settings.db_pool_size)
        redis = create_redis(target_of(settings), socket_timeout=10.0)
        await ready(redis)
        storage = create_storage(settings)
        try:
            if settings.run_migrations:
                await db.migrate(pool, "montage_orchestrator")
            deps = Deps.build(settings, pool, redis, storage)
            app[DEPS] = deps
            app[READY_CHECKS]["postgres"] = lambda: pool.fetchval("SELECT 1")
            app[READY_CHECKS]["redis"] = redis.ping
            pipeline = Pipeline(deps)
            # One results consumer per partition (see montage_common.keys), sharing the pipeline.
            consumers = [
                StreamConsumer(
                    redis=redis,
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
            stop = asyncio.Event()
            tasks = [
                *(asyncio.create_task(c.run(), name=f"results-consumer-{i}") for i, c in enumerate(consumers)),
                asyncio.create_task(Sweeper(deps, replica).run(stop), name="sweeper"),
            ]
            log.info("orchestrator_started", replica=replica, environment=settings.environment)
            try:
                yield
            finally:
                for c in consumers:
                    c.stop()
                stop.set()
                _done, pending = await asyncio.wait(tasks, timeout=settings.shutdown_grace_seconds + 1)
                for t in pending:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        finally:
            await storage.close()
            await redis.aclose()
            await pool.close()

    app.cleanup_ctx.append(resources)
    return app
