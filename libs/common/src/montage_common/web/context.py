"""What every room of :mod:`montage_common.web` shares: header names, the keys an app and a
request carry, the handler type, and the HTTP parser's header-line limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

HEADER_REQUEST_ID = "X-Request-ID"
HEADER_INTERNAL = "X-Montage-Internal"
HEADER_USER = "X-Montage-User-Id"
SERVER_NAME = "montage"  # the Server header: no framework or version
MAX_FIELD_SIZE = 16384  # one header line; the request line is capped by aiohttp at 8190 bytes

SERVICE: web.AppKey[str] = web.AppKey("service", str)
# The user a request acts for: set by the gateway after authentication; internal services take
# it from the gateway's X-Montage-User-Id. The access log reports it.
USER_ID: web.RequestKey[str | None] = web.RequestKey("user_id", str)
READY_CHECKS: web.AppKey[dict[str, Callable[[], Awaitable[object]]]] = web.AppKey("ready_checks", dict)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
ON_CONNECTION_LOST: web.RequestKey[list[Callable[[], None]]] = web.RequestKey("on_connection_lost", list)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
