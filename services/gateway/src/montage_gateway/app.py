"""The gateway application: ``create_app(settings)``.

Everything with a lifetime (Redis client, the upstream HTTP session, the SSE hub and its tasks)
is created in :func:`resources` (``app.cleanup_ctx``) and reached by handlers through
``app[GATEWAY]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from montage_common.errors import RateLimitError, Unauthorized
from montage_common.redis import create_redis, keys_for, ready, target_of
from montage_common.storage import LocalFiles
from montage_common.web import REQUEST_ID, USER_ID, Handler, create_base_app
from redis.asyncio import Redis

from montage_gateway import admin
from montage_gateway.auth import Authenticator, build_verifier, request_user
from montage_gateway.cors import Cors
from montage_gateway.dev import DevHandlers
from montage_gateway.files import FilesHandler
from montage_gateway.health import HealthHandler
from montage_gateway.hub import Hub
from montage_gateway.openapi import DocsHandler
from montage_gateway.proxy import Forwarder, Upstream, client_ip
from montage_gateway.ratelimit import JobRateLimiter, RequestGuard
from montage_gateway.settings import GatewaySettings
from montage_gateway.slots import ConnectionSlots
from montage_gateway.sse import StreamHandler
from montage_gateway.tickets import TicketStore

log = structlog.get_logger()

# Routes (canonical form) that need no bearer token; the stream authenticates itself (ticket).
PUBLIC_ROUTES = frozenset(
    {
        "/api/v1/health",
        "/api/v1/openapi.json",
        "/api/v1/docs",
        "/api/v1/dev/token",
        "/demo",
        "/demo/{path}",
        "/files/{key}",
    }
)
# The operator console's page authenticates itself (header or cookie; montage_gateway.admin).
PUBLIC_ROUTES |= admin.PAGE_ROUTES
SELF_AUTH_ROUTES = frozenset({"/api/v1/jobs/{job_id}/stream"})
# Not counted by the per-IP guard: load balancers and monitors poll the health route.
UNGUARDED_ROUTES = frozenset({"/api/v1/health"})
# What the gateway forwards: exactly these routes, nothing else (no prefix, no catch-all). A
# request reaches an internal service only through a route matched here on the decoded path,
# and paths that another hop could resolve differently (dot segments …) never get this far
# (``montage_common.web.unsafe_path``).
ORCHESTRATOR_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/{job_id}"),
    ("POST", "/api/v1/jobs/{job_id}/cancel"),
    ("GET", "/api/v1/jobs/{job_id}/download"),
)
RAGNAROK_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/api/nexus/ragnarok/direct/submit"),
    ("POST", "/api/nexus/ragnarok/generate/enriched"),
    ("GET", "/api/nexus/ragnarok/jobs/{job_id}"),
)


@dataclass
class Gateway:
    """The gateway's live components (one per app)."""

    settings: GatewaySettings
    redis: Redis
    auth: Authenticator
    guard: RequestGuard
    limiter: JobRateLimiter
    forwarder: Forwarder
    orchestrator: Upstream
    ragnarok: Upstream
    hub: Hub
    stream: StreamHandler
    health: HealthHandler


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth where required, then the per-IP and per-user request guard.

    Unknown routes (404) and wrong methods (405) are answered as such without asking for a
    token: the router's verdict comes first.
    """
    route = _route(request)
    if route in UNGUARDED_ROUTES:
        return await handler(request)
    gw = request.app[GATEWAY]
    ip = client_ip(request, gw.settings.trust_forwarded_for)
    user: str | None = None
    matched = request.match_info.http_exception is None
    if matched and route and route not in PUBLIC_ROUTES and route not in SELF_AUTH_ROUTES:
        try:
            user = await gw.auth.authenticate(request)
        except Unauthorized:
            await gw.guard.check(ip, None)
            raise
    await gw.guard.check(ip, user)
    request[USER_ID] = user
    return await handler(request)


async def forward_orchestrator(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    return await gw.forwarder.forward(request, gw.orchestrator, request_user(request))


async def forward_ragnarok(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    return await gw.forwarder.forward(request, gw.ragnarok, request_user(request))


async def upload_audio(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/upload-audio``: the job-creation rate limit, then the streamed upload."""
    gw = request.app[GATEWAY]
    user = request_user(request)
    # Unique per attempt even if a client reuses its X-Request-ID.
    member = f"{request[REQUEST_ID]}:{uuid.uuid4().hex[:8]}"
    decision = await gw.limiter.acquire(user, member)
    if not decision.allowed:
        raise RateLimitError(
            extra={"retry_after": decision.retry_after, "limit": gw.limiter.limit, "window": gw.limiter.window_text},
            headers={"Retry-After": str(decision.retry_after)},
        )
    answered = False

    async def on_status(status: int) -> None:
        nonlocal answered
        answered = True
        if status != 201:  # rejected or failed creations give their slot back
            await gw.limiter.release(user, member)

    try:
        return await gw.forwarder.forward(
            request, gw.orchestrator, user, time_limit=gw.settings.upload_timeout_seconds, on_status=on_status
        )
    except BaseException:
        if not answered:
            with contextlib.suppress(Exception):
                await asyncio.shield(gw.limiter.release(user, member))
        raise


async def stream(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].stream.stream(request)


async def stream_ticket(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].stream.ticket(request)


async def health(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].health.health(request)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def resources(settings: GatewaySettings):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        keys = keys_for(settings)
        redis = create_redis(
            target_of(settings), max_connections=settings.redis_max_connections, pool_wait_seconds=10.0
        )
        await ready(redis)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.upstream_pool_size, limit_per_host=settings.upstream_pool_size
            ),
            auto_decompress=False,
        )
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
            target_of(settings),
            keys,
            queue_size=settings.sse_queue_size,
            heartbeat_seconds=settings.sse_heartbeat_seconds,
        )
        slots = ConnectionSlots(
            redis,
            keys,
            per_job=settings.sse_max_per_job,
            per_user=settings.sse_max_per_user,
            lease_seconds=settings.sse_slot_lease_seconds,
            refresh_seconds=settings.sse_heartbeat_seconds,
        )
        app[GATEWAY] = Gateway(
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
            forwarder=forwarder,
            orchestrator=orchestrator,
            ragnarok=Upstream("ragnarok-proxy", settings.ragnarok_proxy_url),
            hub=hub,
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
            health=HealthHandler(forwarder, orchestrator, redis),
        )

        # No Redis readiness check: a Redis blip must not take every gateway replica out of the
        # load balancer at once. Each request degrades on its own (503 where Redis is needed, see
        # docs/security.md) and the hub resubscribes by itself; /api/v1/health reports Redis.
        tasks = [
            asyncio.create_task(hub.run(), name="sse-pubsub"),
            asyncio.create_task(hub.heartbeats(), name="sse-heartbeats"),
            asyncio.create_task(slots.refresh_forever(), name="sse-leases"),
        ]
        log.info("gateway_started", orchestrator=settings.orchestrator_url, ragnarok=settings.ragnarok_proxy_url)
        try:
            yield
        finally:
            hub.stop()
            for task in tasks:
                await _cancel(task)
            await session.close()
            await redis.aclose()

    return ctx


async def _close_streams(app: web.Application) -> None:
    """On shutdown, end SSE streams so clients reconnect to another replica at once."""
    if GATEWAY in app:
        app[GATEWAY].hub.close_all("shutdown")


def create_app(settings: GatewaySettings) -> web.Application:
    app = create_base_app("gateway", client_max_size=settings.max_body_bytes)
    cors = Cors(settings.allowed_origins)
    app.middlewares.extend([cors.preflight, access_middleware])
    app.on_response_prepare.append(cors.on_prepare)
    app.on_shutdown.append(_close_streams)
    app.cleanup_ctx.append(resources(settings))

    development = settings.environment == "development"
    docs = DocsHandler(development=development)
    r = app.router
    r.add_get("/api/v1/health", health)
    r.add_get("/api/v1/openapi.json", docs.openapi)
    r.add_get("/api/v1/docs", docs.docs)
    if settings.storage_backend == "local":  # Supabase serves its own signed URLs
        files = FilesHandler(LocalFiles(settings.storage_dir, settings.storage_signing_key))
        r.add_get("/files/{key:.*}", files.get)
    r.add_post("/api/v1/upload-audio", upload_audio)
    r.add_get("/api/v1/jobs/{job_id}/stream", stream)
    r.add_post("/api/v1/jobs/{job_id}/stream-ticket", stream_ticket)
    if development:
        dev = DevHandlers(
            secret=settings.jwt_secret,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            ttl_seconds=settings.dev_token_ttl_seconds,
            role_claim=settings.admin_role_claim,
        )
        r.add_post("/api/v1/dev/token", dev.token)
        r.add_get("/demo", dev.demo)
        r.add_get("/demo/{path:.+}", dev.asset)
    for method, path in ORCHESTRATOR_ROUTES:
        r.add_route(method, path, forward_orchestrator)
    for method, path in RAGNAROK_ROUTES:
        r.add_route(method, path, forward_ragnarok)
    # The operator console: /admin/queues and /api/v1/admin/* (admins only; each route listed in admin.API_ROUTES).
    admin.register(r, settings, lambda a: a[GATEWAY])
    return app
