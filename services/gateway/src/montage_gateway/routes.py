"""The gateway's routes, bound to the route table (``montage_contracts.routes``): its own handlers,
and a :class:`Forward` for every non-internal route of the orchestrator and ragnarok-proxy.

What is forwarded is exactly the table's routes (no prefix, no catch-all): a request reaches an
internal service only through one of them, matched on the decoded path, and paths another hop
could resolve differently never get this far (``montage_common.web.unsafe_path``). Who may call a
route is the table's ``auth`` too (:func:`access_middleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from aiohttp import web
from montage_common.routing import bind
from montage_common.storage import LocalFiles
from montage_common.web import REQUEST_ID, USER_ID, Handler
from montage_contracts import routes
from montage_contracts.errors import RateLimitError, Unauthorized
from montage_contracts.routes import Auth, Route, Service

from montage_gateway import admin, usage
from montage_gateway.auth import request_user
from montage_gateway.client_address import client_address
from montage_gateway.deps import GATEWAY, Gateway
from montage_gateway.dev import DevHandlers
from montage_gateway.files import FilesHandler
from montage_gateway.idempotency import parse_key
from montage_gateway.openapi import DocsHandler
from montage_gateway.proxy import ReplyHook, Upstream
from montage_gateway.settings import GatewaySettings


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def _needs_token(entry: Route | None) -> bool:
    """A bearer token checked here, unless the route is public or its handler authenticates."""
    if entry is None:  # served but not in the table: cannot happen (bind), refused if it did
        return True
    return entry.auth in (Auth.USER, Auth.ADMIN) and entry.own_auth is None


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth where the route table asks for it, then the per-IP and per-user request guard.

    Unknown routes (404) and wrong methods (405) are answered as such without asking for a
    token: the router's verdict comes first.
    """
    path = _route(request)
    entry = routes.find(request.method, path)
    if entry is not None and not entry.guarded:
        return await handler(request)
    gw = request.app[GATEWAY]
    ip = client_address(request, gw.settings.proxy_hops)
    user: str | None = None
    matched = request.match_info.http_exception is None
    if matched and path and _needs_token(entry):
        try:
            user = await gw.auth.authenticate(request)
        except Unauthorized:
            await gw.guard.check(ip, None)
            raise
    await gw.guard.check(ip, user)
    request[USER_ID] = user
    return await handler(request)


class Forward:
    """Forwards one route of the table to the service that serves it, as the caller.

    An admin route is forwarded only after the admin check, with ``X-Montage-Role: admin``.
    """

    def __init__(self, route: Route, admin_check: admin.AdminHandlers) -> None:
        self.route = route
        self.service = route.service
        self.admin_check = admin_check if route.auth is Auth.ADMIN else None

    def upstream(self, gw: Gateway) -> Upstream:
        return gw.ragnarok if self.service is Service.RAGNAROK else gw.orchestrator

    async def handle(self, request: web.Request) -> web.StreamResponse:
        gw = request.app[GATEWAY]
        if self.admin_check is not None:
            user = await self.admin_check.require_admin(request)
            return await gw.forwarder.forward(
                request, self.upstream(gw), user, extra_headers={admin.HEADER_ROLE: admin.ADMIN_ROLE}
            )
        return await gw.forwarder.forward(request, self.upstream(gw), request_user(request))


class CreatingForward(Forward):
    """A route that creates a job (``retryJob``): a slot of the job-creation rate limit first.

    A retry creates a job that occupies the workers like an upload, so it counts against the same
    limit; the slot is given back when the orchestrator does not answer 201 (a refused retry)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, None)

    async def _create(self, request: web.Request, on_reply: ReplyHook | None) -> web.StreamResponse:
        """Take a rate-limit slot (given back unless the orchestrator answers 201), forward the request."""
        gw = request.app[GATEWAY]
        user = request_user(request)
        # Unique per attempt even if a client reuses its X-Request-ID.
        member = f"{request[REQUEST_ID]}:{uuid.uuid4().hex[:8]}"
        decision = await gw.limiter.acquire(user, member)
        if not decision.allowed:
            raise RateLimitError(
                extra={
                    "retry_after": decision.retry_after,
                    "limit": gw.limiter.limit,
                    "window": gw.limiter.window_text,
                },
                headers={"Retry-After": str(decision.retry_after), **gw.limiter.headers(decision)},
            )
        answered = False

        async def on_status(status: int) -> None:
            nonlocal answered
            answered = True
            if status != 201:  # rejected or failed creations give their slot back
                await gw.limiter.release(user, member)

        try:
            return await gw.forwarder.forward(
                request,
                self.upstream(gw),
                user,
                time_limit=gw.settings.upload_timeout_seconds,
                on_status=on_status,
                on_reply=on_reply,
                reply_headers=lambda status: gw.limiter.headers(decision, released=status != 201),
            )
        except BaseException:
            if not answered:
                with contextlib.suppress(Exception):
                    await asyncio.shield(gw.limiter.release(user, member))
            raise


class UploadForward(CreatingForward):
    """``POST /api/v1/upload-audio``: its ``Idempotency-Key`` first (a repeated key takes no slot,
    see ``montage_gateway.idempotency``), then the job-creation rate limit and the streamed upload."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = parse_key(request)
        if key is None:
            return await self._create(request, None)
        gw = request.app[GATEWAY]
        return await gw.idempotency.upload(
            request, request_user(request), key, lambda keep: self._create(request, keep)
        )


# Forwarded routes whose forwarding does more than forward (by operation id).
FORWARDS: dict[str, type[Forward]] = {"uploadAudio": UploadForward, "retryJob": CreatingForward}


async def stream(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].stream.stream(request)


async def stream_ticket(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].stream.ticket(request)


async def user_stream(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].stream.user_stream(request)


async def events_ticket(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].stream.events_ticket(request)


async def health(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].health.health(request)


def own_handlers(settings: GatewaySettings, console: admin.AdminHandlers) -> dict[str, Handler | None]:
    """The gateway's own routes' handlers by operation id (``None``: not served in this configuration)."""
    development = settings.environment == "development"
    docs = DocsHandler(development=development)
    # Supabase serves its own signed URLs: the gateway serves files only with local storage.
    files = (
        FilesHandler(LocalFiles(settings.storage_dir, settings.storage_signing_key)).get
        if settings.storage_backend == "local"
        else None
    )
    out: dict[str, Handler | None] = {
        "getHealth": health,
        "getOpenApi": docs.openapi,
        "getDocs": docs.docs,
        "getFile": files,
        "streamJobEvents": stream,
        "createStreamTicket": stream_ticket,
        "streamUserEvents": user_stream,
        "createEventsTicket": events_ticket,
        "getUsage": usage.get_usage,
        **console.handlers(),
    }
    if development:  # the development routes are not in the table's production view at all
        dev = DevHandlers(
            secret=settings.jwt_secret,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            ttl_seconds=settings.dev_token_ttl_seconds,
            role_claim=settings.admin_role_claim,
        )
        out |= {"createDevToken": dev.token, "getDemoPage": dev.demo, "getDemoAsset": dev.asset}
    return out


def add_routes(app: web.Application, settings: GatewaySettings) -> None:
    """Bind every public route of the table: the gateway's own, and a forwarder for the others."""
    table = routes.public(development=settings.environment == "development")
    console = admin.AdminHandlers(settings, lambda a: a[GATEWAY])
    forwards: dict[str, Handler | None] = {
        r.operation_id: FORWARDS.get(r.operation_id, Forward)(r, console).handle
        for r in table
        if r.service is not Service.GATEWAY
    }
    bind(app.router, table, {**own_handlers(settings, console), **forwards})
