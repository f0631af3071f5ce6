"""aiohttp scaffolding shared by every service.

- ``X-Request-ID``: a valid incoming id is kept, else a UUIDv4 is made; it is returned and bound
  to every log line of the request.
- One error middleware maps :class:`MontageError` (and aiohttp's own HTTP errors) to the spec's
  error body; anything unexpected is logged and answered 500 with that body, never a traceback.
- ``/healthz`` (liveness), ``/readyz`` (dependencies answer), ``/metrics`` (Prometheus text).
- Internal calls carry ``X-Montage-Internal`` (a shared secret) and ``X-Montage-User-Id``.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from montage_common.errors import MethodNotAllowed, MontageError, NotFound, PayloadTooLarge, Unauthorized
from montage_common.metrics import HTTP_LATENCY, HTTP_REQUESTS
from montage_common.settings import CommonSettings

log = structlog.get_logger()

HEADER_REQUEST_ID = "X-Request-ID"
HEADER_INTERNAL = "X-Montage-Internal"
HEADER_USER = "X-Montage-User-Id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

SERVICE: web.AppKey[str] = web.AppKey("service", str)
READY_CHECKS: web.AppKey[dict[str, Callable[[], Awaitable[object]]]] = web.AppKey("ready_checks", dict)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


def error_response(err: MontageError) -> web.Response:
    return json_response(err.body(), status=err.status, headers=err.headers)


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
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    service = request.app[SERVICE]
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
        route = _route_name(request)
        HTTP_REQUESTS.labels(service, route, request.method, str(status)).inc()
        HTTP_LATENCY.labels(service, route, request.method).observe(time.perf_counter() - start)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MontageError as err:
        if err.status >= 500:
            log.warning("request_failed", code=err.code, error=err.message, path=request.path)
        return error_response(err)
    except web.HTTPNotFound:
        return error_response(NotFound(f"No route for {request.path}"))
    except web.HTTPMethodNotAllowed:
        return error_response(MethodNotAllowed(f"Method {request.method} not allowed on {request.path}"))
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("Request body too large"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        base = MontageError(exc.reason)
        return json_response({**base.body(), "code": exc.reason.upper().replace(" ", "_")}, status=exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return error_response(MontageError())


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "service": request.app[SERVICE]})


async def run_ready_checks(app: web.Application, limit_seconds: float = 2.0) -> dict[str, str]:
    """Run every readiness check; returns ``{name: "ok" | error text}``."""
    results: dict[str, str] = {}
    for name, check in app[READY_CHECKS].items():
        try:
            await asyncio.wait_for(check(), limit_seconds)
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"{type(exc).__name__}: {exc}"[:200]
    return results


async def readyz(request: web.Request) -> web.Response:
    results = await run_ready_checks(request.app)
    ok = all(v == "ok" for v in results.values())
    return json_response({"status": "ready" if ok else "not_ready", "checks": results}, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(generate_latest)
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def create_base_app(service: str, *, client_max_size: int = 1024**2) -> web.Application:
    """An application with the shared middlewares and the health and metrics routes."""
    app = web.Application(
        middlewares=[request_id_middleware, metrics_middleware, error_middleware],
        client_max_size=client_max_size,
        handler_args={"max_field_size": 16384},
    )
    app[SERVICE] = service
    app[READY_CHECKS] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def internal_user(request: web.Request, secret: str) -> str:
    """The user id the gateway vouched for; refuses identity headers not from the gateway."""
    given = request.headers.get(HEADER_INTERNAL, "")
    if not given or not hmac.compare_digest(given.encode(), secret.encode()):
        raise Unauthorized("Missing or invalid internal credentials")
    user = request.headers.get(HEADER_USER, "")
    if not user:
        raise Unauthorized("Missing user identity")
    return user


def run(app: web.Application, settings: CommonSettings, *, port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get ``shutdown_grace_seconds`` to finish."""
    web.run_app(
        app,
        host=settings.host,
        port=port or settings.port,
        shutdown_timeout=settings.shutdown_grace_seconds,
        access_log=None,
        print=None,
        handle_signals=True,
    )
