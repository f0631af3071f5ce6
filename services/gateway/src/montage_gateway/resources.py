"""The gateway's resources, one ``cleanup_ctx`` each (aiohttp's ``background_tasks`` pattern):
the Redis client (``montage_common.resources``), the upstream HTTP session, the components built
on them, the background tasks.
They start in that order and stop in the reverse one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from montage_common.redis import keys_for, target_of
from montage_common.resources import REDIS, Context
from redis.asyncio import Redis

from montage_gateway.auth import Authenticator, build_verifier
from montage_gateway.deps import GATEWAY, Gateway
from montage_gateway.health import HealthHandler
from montage_gateway.hub import Hub
from montage_gateway.idempotency import IdempotentUploads
from montage_gateway.proxy import Forwarder, Upstream
from montage_gateway.ratelimit import JobRateLimiter, RequestGuard
from montage_gateway.settings import GatewaySettings
from montage_gateway.slots import ConnectionSlots
from montage_gateway.sse import StreamHandler
from montage_gateway.tickets import TicketStore

log = structlog.get_logger()

HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)


async def _cancel(task: asyncio.Task[None], grace: float = 5.0) -> None:
    """Cancel ``task`` and wait for it, at most ``grace`` seconds (a cancel redis-py swallows must
    not hold the shutdown; the loops also end by their stop signal)."""
    task.cancel()
    _, stuck = await asyncio.wait([task], timeout=grace)
    if stuck:
        log.warning("background_task_stuck", task=task.get_name())
    elif not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()


def http_session(settings: GatewaySettings) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.upstream_pool_size, limit_per_host=settings.upstream_pool_size
            ),
            auto_decompress=False,
        )
        app[HTTP] = session
        try:
            yield
        finally:
            await session.close()

    return ctx


def build(settings: GatewaySettings, redis: Redis, session: aiohttp.ClientSession) -> Gateway:
    """The gateway's components over one Redis client and one HTTP session."""
    keys = keys_for(settings)
    forwarder = Forwarder(
        session,
        internal_secret=settings.internal_secret,
        timeout=settings.upstream_timeout_seconds,
        connect_timeout=settings.upstream_connect_timeout_seconds,
        max_body_bytes=settings.max_body_bytes,
    )
    orchestrator = Upstream("orchestrator", settings.orchestrator_url)
    auth = Authenticator(
        build_verifier(settings, session),
        redis,
        keys,
        cache=settings.jwt_cache,
        cache_seconds=settings.jwt_cache_seconds,
    )
    hub = Hub(
        target_of(settings), keys, queue_size=settings.sse_queue_size, heartbeat_seconds=settings.sse_heartbeat_seconds
    )
    slots = ConnectionSlots(
        redis,
        keys,
        per_job=settings.sse_max_per_job,
        per_user=settings.sse_max_per_user,
        lease_seconds=settings.sse_slot_lease_seconds,
        refresh_seconds=settings.sse_heartbeat_seconds,
    )
    return Gateway(
        settings=settings,
        redis=redis,
        auth=auth,
        guard=RequestGuard(
            redis,
            keys,
            window_seconds=settings.guard_window_seconds,
            per_user=settings.guard_user_requests,
            per_ip=settings.guard_ip_requests,
        ),
        limiter=JobRateLimiter(
            redis, keys, limit=settings.job_rate_limit, window_seconds=settings.job_rate_window_seconds
        ),
        idempotency=IdempotentUploads(
            redis,
            keys,
            ttl_seconds=settings.idempotency_ttl_seconds,
            wait_seconds=settings.idempotency_wait_seconds,
            lease_seconds=settings.upload_timeout_seconds + 30,
            max_body_bytes=settings.max_body_bytes,
        ),
        forwarder=forwarder,
        orchestrator=orchestrator,
        ragnarok=Upstream("ragnarok-proxy", settings.ragnarok_proxy_url),
        hub=hub,
        slots=slots,
        stream=StreamHandler(
            hub=hub,
            slots=slots,
            tickets=TicketStore(redis, keys, ttl_seconds=settings.stream_ticket_ttl_seconds),
            auth=auth,
            forwarder=forwarder,
            orchestrator=orchestrator,
            redis=redis,
            keys=keys,
            close_after_final=settings.sse_close_after_final_seconds,
            write_timeout=settings.sse_write_timeout_seconds,
        ),
        health=HealthHandler(forwarder, orchestrator, redis, keys),
    )


def components(settings: GatewaySettings) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[GATEWAY] = build(settings, app[REDIS], app[HTTP])
        yield

    return ctx


async def background_tasks(app: web.Application) -> AsyncIterator[None]:
    """The SSE hub's subscription and heartbeats, and the connection-slot leases.

    No Redis readiness check: a Redis blip must not take every gateway replica out of the load
    balancer at once. Each request degrades on its own (503 where Redis is needed, see
    docs/security.md) and the hub resubscribes by itself; /api/v1/health reports Redis.
    """
    gw = app[GATEWAY]
    stop = asyncio.Event()  # the loops' own stop signal, besides the cancel (see _cancel)
    tasks = [
        asyncio.create_task(gw.hub.run(), name="sse-pubsub"),
        asyncio.create_task(gw.hub.heartbeats(stop), name="sse-heartbeats"),
        asyncio.create_task(gw.slots.refresh_forever(stop), name="sse-leases"),
    ]
    log.info("gateway_started", orchestrator=gw.settings.orchestrator_url, ragnarok=gw.settings.ragnarok_proxy_url)
    try:
        yield
    finally:
        stop.set()
        gw.hub.stop()
        for task in tasks:
            await _cancel(task)


async def close_streams(app: web.Application) -> None:
    """On shutdown, end SSE streams so clients reconnect to another replica at once."""
    if GATEWAY in app:
        app[GATEWAY].hub.close_all("shutdown")
