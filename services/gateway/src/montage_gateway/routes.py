"""The gateway's routes: which it serves, which it forwards (an explicit list), and who may call them.

A request reaches an internal service only through a route listed here, matched on the decoded
path; paths another hop could resolve differently never get this far
(``montage_common.web.unsafe_path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from aiohttp import web
from montage_common.storage import LocalFiles
from montage_common.web import REQUEST_ID, USER_ID, Handler
from montage_contracts.errors import RateLimitError, Unauthorized

from montage_gateway import admin
from montage_gateway.auth import request_user
from montage_gateway.client_address import client_address
from montage_gateway.deps import GATEWAY
from montage_gateway.dev import DevHandlers
from montage_gateway.files import FilesHandler
from montage_gateway.openapi import DocsHandler
from montage_gateway.settings import GatewaySettings

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
    ip = client_address(request, gw.settings.proxy_hops)
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


def add_routes(app: web.Application, settings: GatewaySettings) -> None:
    """Register every route of the gateway (nothing else is served or forwarded)."""
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
