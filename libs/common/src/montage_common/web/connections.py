"""The connections a service accepts, and the limits that keep one client from holding them.

**Limits** (:class:`ConnectionLimits`, from the settings every service shares):

- *keep-alive*: a connection with no request in progress, and no byte of the next one, is closed
  after ``HTTP_KEEPALIVE_TIMEOUT_SECONDS``; that also covers a socket that connects and sends
  nothing (aiohttp arms the same timer when the connection is made). aiohttp's own default is
  3630 s, which let a few hundred idle sockets per client sit for an hour.
- *header read*: once the first byte of a request has arrived, its request line and headers must
  be complete within ``HTTP_HEADER_TIMEOUT_SECONDS``, or the client is answered 408 and the
  connection closed (after :data:`DRAIN_SECONDS` of reading what it still sends, so the answer is
  not lost to a reset). A client sending one header line every few seconds ("slowloris") never
  looks idle, so the keep-alive timer alone would not end it before its full term.
- *per client*: at most ``max_per_client`` open connections from one client address (an IPv4
  address, or an IPv6 /64, which one subscriber usually holds whole); the next is closed as soon
  as it is accepted, before it costs a request. Only where a service faces clients directly (the
  gateway without trusted proxies): behind a proxy every connection comes from the proxy.

A request body is not bounded here: the gateway's forwarding has its own timeout (408 for a body
that arrives too slowly) and size limit (413).

**Why the protocol class is replaced.** aiohttp's supported seams are used for everything they
cover: the keep-alive timeout and the header-line limit are ``RequestHandler`` arguments passed
through ``web.AppRunner(**kwargs)`` and ``Application(handler_args=...)``. Three things have no
seam: answering a request the HTTP parser refused with the spec's error body (aiohttp builds a
plain-text answer in ``RequestHandler.handle_error``, outside every middleware; asking for a hook
is aio-libs/aiohttp#3287, open since 2018), learning that a client went away without cancelling
every handler (``handler_cancellation``, off here as in ``web.run_app``: handlers that must finish
would be cut mid-transaction), and the header-read timeout and per-client cap (no such options;
``access_log_class`` sees only finished requests, ``request_factory`` only parsed ones).
``web.Server`` builds each connection's ``RequestHandler`` in ``__call__`` with no way to choose
its class, so :class:`AppRunner <montage_common.web.serving.AppRunner>` gives the server built by
``AppRunner._make_server`` the class :class:`FrontDoorServer`, whose ``__call__`` builds a
:class:`Connection`. That relies on aiohttp internals: ``_make_server``, ``Server._kwargs`` and
``_loop``, and ``RequestHandler``'s ``_current_request``, ``_waiter`` and ``_messages``.
``tests/common/test_connections.py`` guards them across aiohttp upgrades: a check that each
still exists as used, and the behaviour itself (parser errors, disconnect callbacks, both
timeouts, the cap) over real sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from aiohttp import web, web_protocol
from montage_contracts.errors import RequestTimeout

from montage_common.metrics import HTTP_CONNECTIONS_CLOSED
from montage_common.settings import CommonSettings
from montage_common.web.context import HEADER_REQUEST_ID, ON_CONNECTION_LOST, SERVER_NAME
from montage_common.web.errors import parser_error_body

log = structlog.get_logger()
_json = msgspec.json.Encoder()
DRAIN_SECONDS = 2.0  # after a 408, how long what the client still sends is read before the close


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a connection may idle or take over a request's headers, and how many one client
    may hold open (0: no cap)."""

    keepalive_timeout: float
    header_timeout: float
    max_per_client: int = 0

    @classmethod
    def of(cls, settings: CommonSettings, *, max_per_client: int = 0) -> ConnectionLimits:
        return cls(settings.http_keepalive_timeout_seconds, settings.http_header_timeout_seconds, max_per_client)


def client_key(peer: Any) -> str | None:
    """The per-client cap's key for a socket's peer name: the IPv4 address, or the IPv6 /64."""
    if not isinstance(peer, tuple) or not peer:
        return None  # a Unix socket, or a transport that does not say
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class FrontDoor:
    """What a server's connections share: the limits, the service's name, and the open
    connections per client."""

    limits: ConnectionLimits
    service: str
    open_per_client: dict[str, int] = field(default_factory=dict)

    def admit(self, key: str) -> bool:
        """Count one more connection of ``key``; False (nothing counted) when it is at the cap."""
        held = self.open_per_client.get(key, 0)
        if self.limits.max_per_client and held >= self.limits.max_per_client:
            return False
        self.open_per_client[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self.open_per_client.get(key, 0) - 1
        if held > 0:
            self.open_per_client[key] = held
        else:
            self.open_per_client.pop(key, None)


def on_connection_lost(request: web.Request, callback: Callable[[], None]) -> None:
    """Call ``callback`` once if the client's connection closes while ``request`` is handled.

    The server does not cancel handlers when a client goes away (``handler_cancellation`` is
    off, as in ``web.run_app``), so a handler that waits on something else (an SSE stream waiting
    for events) would notice only at its next write. :class:`Connection` calls these callbacks
    from ``connection_lost``. A connection already gone gets the callback at once.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        asyncio.get_running_loop().call_soon(callback)
        return
    request.setdefault(ON_CONNECTION_LOST, []).append(callback)


def _timeout_answer() -> bytes:
    body = _json.encode(RequestTimeout("The request's headers were not received in time").body())
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{HEADER_REQUEST_ID}: {uuid.uuid4()}\r\nServer: {SERVER_NAME}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Connection(web_protocol.RequestHandler):
    """aiohttp's protocol for one connection, with the limits and answers described above."""

    def __init__(self, manager: web.Server, front: FrontDoor, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.front = front
        self._client: str | None = None  # counted against the per-client cap while open
        self._header_deadline: asyncio.TimerHandle | None = None
        self._draining = False  # answered 408: what still arrives is read and dropped until the close

    # --- per-client cap ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        key = client_key(transport.get_extra_info("peername"))
        if key is None:
            return
        if self.front.admit(key):
            self._client = key
            return
        HTTP_CONNECTIONS_CLOSED.labels(self.front.service, "per_client_cap").inc()
        log.debug("connection_refused_per_client_cap", client=key, cap=self.front.limits.max_per_client)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client is not None:
            self.front.release(self._client)
            self._client = None
        self._disarm_header_deadline()
        request = self._current_request
        super().connection_lost(exc)
        if request is not None:
            for callback in request.get(ON_CONNECTION_LOST, ()):
                try:
                    callback()
                except Exception:
                    log.exception("connection_lost_callback_failed")

    # --- header-read timeout ----------------------------------------------------------
    def _waiting_for_request(self) -> bool:
        """No request being handled or queued: bytes arriving now belong to a request's head."""
        return self._current_request is None and not self._messages

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        super().data_received(data)
        if not self._waiting_for_request():
            self._disarm_header_deadline()  # the head is complete (or a body is being read)
        elif data and self._header_deadline is None and self.transport is not None:
            loop = asyncio.get_running_loop()
            self._header_deadline = loop.call_later(self.front.limits.header_timeout, self._header_timed_out)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_timed_out(self) -> None:
        self._header_deadline = None
        waiting = self._waiter is not None and not self._waiter.done()
        if not (waiting and self._waiting_for_request()) or self.transport is None:
            return  # between requests after all (a body's tail read after its answer): not a slow head
        HTTP_CONNECTIONS_CLOSED.labels(self.front.service, "header_timeout").inc()
        log.info("connection_closed_header_timeout", seconds=self.front.limits.header_timeout)
        # Answer, end our side, and keep reading (dropping it) for a moment before closing: a
        # socket closed with the client's next line still arriving is reset, and a reset makes
        # the client's system discard the answer it has not read yet.
        self._draining = True
        self.transport.write(_timeout_answer())
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(DRAIN_SECONDS, self.force_close)

    # --- requests the parser refused ----------------------------------------------------
    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        status, body = parser_error_body(exc, status)
        log.warning("bad_http_request", status=status, error=type(exc).__name__ if exc else None)
        resp = web.Response(
            body=_json.encode(body),
            status=status,
            content_type="application/json",
            headers={HEADER_REQUEST_ID: str(uuid.uuid4()), "Server": SERVER_NAME},
        )
        resp.force_close()
        return resp


class FrontDoorServer(web.Server):
    """aiohttp's server whose connections are :class:`Connection` (see the module docstring)."""

    front: FrontDoor

    def __call__(self) -> web_protocol.RequestHandler:
        return Connection(self, self.front, loop=self._loop, **self._kwargs)
