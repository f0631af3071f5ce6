"""What every request and response carries, on the API and the ops port alike.

- ``X-Request-ID``: a valid incoming id is kept, else a UUIDv4 is made; it is returned and bound
  to every log line of the request.
- One structured access line per request and the request metrics (count and latency by route,
  method and status).
- The ``Server`` header names no framework or version.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from aiohttp import web

from montage_common.metrics import HTTP_LATENCY, HTTP_REQUESTS
from montage_common.web.context import (
    HEADER_REQUEST_ID,
    HEADER_USER,
    REQUEST_ID,
    SERVER_NAME,
    SERVICE,
    USER_ID,
    Handler,
)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
access = structlog.get_logger("access")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get(HEADER_REQUEST_ID, "")
    request_id = incoming if _REQUEST_ID_RE.match(incoming) else str(uuid.uuid4())
    request[REQUEST_ID] = request_id
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers[HEADER_REQUEST_ID] = request_id
            raise
        if not response.prepared:
            response.headers[HEADER_REQUEST_ID] = request_id
        return response


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Per request: one structured access line (method, route, status, duration, request id,
    user id) and the request metrics (count and latency by route, method and status)."""
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - start
        route = _route_name(request)
        HTTP_REQUESTS.labels(request.app[SERVICE], route, request.method, str(status)).inc()
        HTTP_LATENCY.labels(request.app[SERVICE], route, request.method).observe(elapsed)
        access.info(
            "access",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
            user_id=request.get(USER_ID) or request.headers.get(HEADER_USER) or None,
            remote=request.remote,
        )


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME
