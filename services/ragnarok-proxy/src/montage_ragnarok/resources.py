"""ragnarok-proxy's resources, one ``cleanup_ctx`` each, started in this order and stopped in the
reverse one: the Postgres pool (and migrations) and the Redis client (both from
``montage_common.resources``), the HTTP session to RAGNAROK
and Trinity, the container (``app[DEPS]``), the background poller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from montage_common.redis import keys_for
from montage_common.resources import POOL, REDIS, Context

from montage_ragnarok.deps import DEPS, Deps
from montage_ragnarok.events import EventPublisher
from montage_ragnarok.poller import Poller
from montage_ragnarok.ragnarok import RagnarokClient
from montage_ragnarok.settings import ProxySettings
from montage_ragnarok.store import JobStore
from montage_ragnarok.trinity import TrinityClient

log = structlog.get_logger()

HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)


async def http_session(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    app[HTTP] = session
    try:
        yield
    finally:
        await session.close()


def container(settings: ProxySettings, replica_id: str) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        session = app[HTTP]
        app[DEPS] = Deps(
            settings,
            JobStore(app[POOL]),
            RagnarokClient(session, settings, replica_id),
            TrinityClient(session, settings, replica_id),
        )
        yield

    return ctx


def poller(settings: ProxySettings, replica_id: str) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        deps = app[DEPS]
        events = EventPublisher(app[REDIS], keys_for(settings), settings.events_stream_maxlen)
        stop = asyncio.Event()
        task = asyncio.create_task(
            Poller(settings, deps.store, deps.ragnarok, events, replica_id).run(stop), name="ragnarok-poller"
        )
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
                released = await asyncio.wait_for(deps.store.release_all(replica_id), 5)
                log.info("leases_released", count=released)

    return ctx
