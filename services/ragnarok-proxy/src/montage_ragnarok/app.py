"""The ragnarok-proxy application: every resource and the poller live in ``app.cleanup_ctx``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from montage_common import db
from montage_common.redis import create_redis, keys_for, ready, target_of
from montage_common.web import READY_CHECKS, create_base_app, internal_only

from montage_ragnarok.events import EventPublisher
from montage_ragnarok.handlers import DEPS, Deps, NexusHandlers, trace_errors_middleware, trace_middleware
from montage_ragnarok.poller import Poller
from montage_ragnarok.ragnarok import RagnarokClient
from montage_ragnarok.settings import ProxySettings
from montage_ragnarok.store import JobStore
from montage_ragnarok.trinity import TrinityClient

log = structlog.get_logger()

SERVICE = "ragnarok-proxy"


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def create_app(settings: ProxySettings) -> web.Application:
    problems = settings.problems()
    if problems:
        raise SystemExit("invalid configuration: " + "; ".join(problems))
    replica_id = settings.replica_id or default_replica_id()
    app = create_base_app(SERVICE)
    # trace ids: bound outside the error mapping (so its log lines carry them), added to error bodies inside it
    app.middlewares.insert(1, trace_middleware)
    app.middlewares.append(trace_errors_middleware)
    app.middlewares.append(internal_only(settings.internal_secret))
    app.router.add_routes(NexusHandlers(settings).routes())

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(settings.database_url, max_size=settings.db_pool_size)
        redis = create_redis(target_of(settings))
        await ready(redis)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        try:
            if settings.run_migrations:
                await db.migrate(pool, "montage_ragnarok")
            store = JobStore(pool)
            ragnarok = RagnarokClient(session, settings, replica_id)
            app[DEPS] = Deps(settings, store, ragnarok, TrinityClient(session, settings, replica_id))
            app[READY_CHECKS]["postgres"] = lambda: pool.fetchval("SELECT 1")
            app[READY_CHECKS]["redis"] = redis.ping
            poller = Poller(
                settings,
                store,
                ragnarok,
                EventPublisher(redis, keys_for(settings), settings.events_stream_maxlen),
                replica_id,
            )
            stop = asyncio.Event()
            task = asyncio.create_task(poller.run(stop), name="ragnarok-poller")
            log.info(
                "proxy_started",
                replica=replica_id,
                ragnarok_url=settings.ragnarok_url,
                trinity_url=settings.trinity_url or None,
            )
            try:
                yield
            finally:
                stop.set()
                try:
                    await asyncio.wait_for(asyncio.shield(task), settings.ragnarok_timeout_seconds + 1)
                except TimeoutError:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                with contextlib.suppress(Exception):
                    released = await asyncio.wait_for(store.release_all(replica_id), 5)
                    log.info("leases_released", count=released)
        finally:
            await session.close()
            await redis.aclose()
            await pool.close()

    app.cleanup_ctx.append(resources)
    return app
