"""Forwarding to the internal services with streamed bodies and their status codes intact.

Request and response bodies flow through in chunks (a 10 MB upload is never held whole). The
caller's ``Authorization`` and any ``X-Montage-*`` headers are dropped; the internal secret and the
verified user id are added (``docs/contracts.md``). An unreachable service answers 503, a slow one
504, with the spec's error body.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web
from montage_common.web import HEADER_INTERNAL, HEADER_REQUEST_ID, HEADER_USER, REQUEST_ID
from montage_contracts.errors import PayloadTooLarge, RequestTimeout
from multidict import CIMultiDict

from montage_gateway.errors import UpstreamTimedOut, UpstreamUnavailable
from montage_gateway.metrics import UPSTREAM_ERRORS, UPSTREAM_LATENCY

log = structlog.get_logger()

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
DROP_FROM_CLIENT = HOP_BY_HOP | {"authorization", "cookie"}
DROP_FROM_UPSTREAM = HOP_BY_HOP | {"access-control-allow-origin", "access-control-allow-credentials", "server", "date"}
CHUNK = 64 * 1024

StatusHook = Callable[[int], Awaitable[None]]
# Headers of the gateway's own to add to an answer, by its status (the upload's `RateLimit`).
HeadersHook = Callable[[int], Mapping[str, str]]
# The largest answer ``forward(on_reply=...)`` reads whole (an upload's JSON answer is ~200 bytes).
BUFFERED_REPLY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    base_url: str


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


ReplyHook = Callable[[UpstreamReply], Awaitable[None]]


class _TooLarge(Exception):
    pass


@dataclass(slots=True)
class _BodyProgress:
    """Whether the client's whole body was read (a timeout before that is the client's)."""

    done: bool = False


class Forwarder:
    """Sends requests to internal services over one shared ``ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        internal_secret: str,
        timeout: float,
        connect_timeout: float,
        max_body_bytes: int,
    ) -> None:
        self.session = session
        self.internal_secret = internal_secret
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_body_bytes = max_body_bytes

    def _client_timeout(self, total: float | None) -> aiohttp.ClientTimeout:
        total = self.timeout if total is None else total
        return aiohttp.ClientTimeout(total=total, connect=min(self.connect_timeout, total))

    def internal_headers(self, request_id: str, user_id: str | None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers[HEADER_INTERNAL] = self.internal_secret
        headers[HEADER_REQUEST_ID] = request_id
        if user_id is not None:
            headers[HEADER_USER] = user_id
        return headers

    def _forward_headers(
        self, request: web.Request, user_id: str | None, extra: Mapping[str, str] | None = None
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            low = name.lower()
            if low in DROP_FROM_CLIENT or low.startswith("x-montage-") or low == "x-request-id":
                continue
            headers.add(name, value)
        if request.body_exists and request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        headers.extend(self.internal_headers(request[REQUEST_ID], user_id))
        if extra:  # the gateway's own X-Montage-* headers (e.g. the admin role), after the client's were dropped
            headers.update(extra)
        if request.remote:
            prior = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{prior}, {request.remote}" if prior else request.remote
        return headers

    async def _body(self, request: web.Request, progress: _BodyProgress) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            sent += len(chunk)
            if sent > self.max_body_bytes:
                raise _TooLarge
            yield chunk
        progress.done = True

    async def forward(
        self,
        request: web.Request,
        upstream: Upstream,
        user_id: str | None,
        *,
        time_limit: float | None = None,
        on_status: StatusHook | None = None,
        extra_headers: Mapping[str, str] | None = None,
        on_reply: ReplyHook | None = None,
        reply_headers: HeadersHook | None = None,
    ) -> web.StreamResponse:
        """Send ``request`` (same method, path and query) to ``upstream`` and stream back its answer.

        With ``on_reply`` the answer is read whole first (at most ``BUFFERED_REPLY_BYTES``) and
        handed to it, headers included, before the client gets it (``Idempotency-Key`` keeps it)."""
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise PayloadTooLarge("Request body too large")
        url = upstream.base_url.rstrip("/") + request.rel_url.raw_path_qs
        progress = _BodyProgress(done=not request.body_exists)
        data = self._body(request, progress) if request.body_exists else None
        start = time.perf_counter()
        status: int | None = None
        try:
            async with self.session.request(
                request.method,
                url,
                headers=self._forward_headers(request, user_id, extra_headers),
                data=data,
                timeout=self._client_timeout(time_limit),
                allow_redirects=False,
            ) as reply:
                status = reply.status
                UPSTREAM_LATENCY.labels(upstream.name).observe(time.perf_counter() - start)
                if on_status is not None:
                    await on_status(reply.status)
                own = reply_headers(reply.status) if reply_headers is not None else {}
                if on_reply is not None:
                    return await self._relay_buffered(request, reply, upstream, on_reply, own)
                return await self._relay(request, reply, upstream, own)
        except _TooLarge:
            raise PayloadTooLarge("Request body too large") from None
        except TimeoutError:
            UPSTREAM_ERRORS.labels(upstream.name, "timeout").inc()
            if status is not None:
                raise  # headers already relayed; the connection is aborted by _relay
            if not progress.done:  # the client was still sending its body: its fault, not ours
                await _notify(on_status, 408)
                raise RequestTimeout("The request body was not received in time") from None
            await _notify(on_status, 504)
            raise UpstreamTimedOut(f"{upstream.name} did not answer in time") from None
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, _TooLarge) or isinstance(exc.__context__, _TooLarge):
                raise PayloadTooLarge("Request body too large") from None
            UPSTREAM_ERRORS.labels(upstream.name, "unreachable").inc()
            log.warning("upstream_unreachable", upstream=upstream.name, error=type(exc).__name__)
            await _notify(on_status, 503)
            raise UpstreamUnavailable(f"{upstream.name} is unavailable") from None

    async def _relay(
        self,
        request: web.Request,
        reply: aiohttp.ClientResponse,
        upstream: Upstream,
        own: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=reply.status, reason=reply.reason)
        for name, value in reply.headers.items():
            if _relayed(name):
                resp.headers.add(name, value)
        resp.headers.update(own or {})
        resp.headers[HEADER_REQUEST_ID] = request[REQUEST_ID]
        if reply.content_length is not None:
            resp.content_length = reply.content_length
        await resp.prepare(request)
        try:
            async for chunk in reply.content.iter_chunked(CHUNK):
                await resp.write(chunk)
        except (TimeoutError, aiohttp.ClientError):
            UPSTREAM_ERRORS.labels(upstream.name, "body").inc()
            log.warning("upstream_body_failed", upstream=upstream.name)
            if request.transport is not None:
                request.transport.close()  # a truncated body must not look complete
            return resp
        await resp.write_eof()
        return resp

    async def _relay_buffered(
        self,
        request: web.Request,
        reply: aiohttp.ClientResponse,
        upstream: Upstream,
        on_reply: ReplyHook,
        own: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = b""
        try:
            async for chunk in reply.content.iter_chunked(CHUNK):
                body += chunk
                if len(body) > BUFFERED_REPLY_BYTES:
                    break
        except (TimeoutError, aiohttp.ClientError):
            UPSTREAM_ERRORS.labels(upstream.name, "body").inc()
            raise UpstreamUnavailable(f"{upstream.name} broke off its answer") from None
        if len(body) > BUFFERED_REPLY_BYTES:
            raise UpstreamUnavailable(f"{upstream.name} answered more than expected")
        headers = {name: value for name, value in reply.headers.items() if name.lower() not in DROP_FROM_UPSTREAM}
        await on_reply(UpstreamReply(reply.status, body, reply.headers.get("Content-Type", ""), headers))
        relayed = {name: value for name, value in headers.items() if _relayed(name)} | dict(own or {})
        relayed[HEADER_REQUEST_ID] = request[REQUEST_ID]
        return _response(reply.status, body, relayed)

    async def call(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        *,
        request_id: str,
        user_id: str | None,
        time_limit: float | None = None,
    ) -> UpstreamReply:
        """A small internal call whose whole answer is read (ownership checks, health)."""
        url = upstream.base_url.rstrip("/") + path
        start = time.perf_counter()
        try:
            async with self.session.request(
                method,
                url,
                headers=self.internal_headers(request_id, user_id),
                timeout=self._client_timeout(time_limit),
            ) as reply:
                body = await reply.read()
                UPSTREAM_LATENCY.labels(upstream.name).observe(time.perf_counter() - start)
                return UpstreamReply(reply.status, body, reply.headers.get("Content-Type", "application/json"))
        except TimeoutError:
            UPSTREAM_ERRORS.labels(upstream.name, "timeout").inc()
            raise UpstreamTimedOut(f"{upstream.name} did not answer in time") from None
        except aiohttp.ClientError as exc:
            UPSTREAM_ERRORS.labels(upstream.name, "unreachable").inc()
            log.warning("upstream_unreachable", upstream=upstream.name, error=type(exc).__name__)
            raise UpstreamUnavailable(f"{upstream.name} is unavailable") from None


def _relayed(name: str) -> bool:
    """Whether an upstream header goes on to the client (never hop-by-hop or internal ``X-Montage-*``)."""
    low = name.lower()
    return low not in DROP_FROM_UPSTREAM and not low.startswith("x-montage-")


def _response(status: int, body: bytes, headers: Mapping[str, str]) -> web.Response:
    """An answer with exactly these headers (``Content-Type`` among them, when the upstream sent one)."""
    resp = web.Response(status=status, body=body)
    for name, value in headers.items():
        resp.headers[name] = value
    return resp


async def _notify(hook: StatusHook | None, status: int) -> None:
    if hook is not None:
        await hook(status)
