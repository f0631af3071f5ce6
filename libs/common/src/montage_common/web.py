"""aiohttp scaffolding shared by every service.

- ``X-Request-ID``: a valid incoming id is kept, else a UUIDv4 is made; it is returned and bound
  to every log line of the request.
- One error middleware maps :class:`MontageError` (and aiohttp's own HTTP errors) to the spec's
  error body; a dependency that is down (Redis, Postgres) is a 503 ``SERVICE_UNAVAILABLE``;
  anything else unexpected is logged and answered 500 with that body, never a traceback.
- Paths with dot segments, backslashes, encoded slashes, control characters or invalid
  percent-encoding (raw, encoded or double-encoded) are refused with 400 before any handler runs,
  so no hop can resolve them into another route.
- Requests the HTTP parser refuses (a request line over 8 KB, headers over 16 KB, garbage) get the
  same error body and an ``X-Request-ID``, never an echo of the input.
- Operational endpoints live on their own port (``OPS_PORT``), never on the API port:
  ``/healthz`` (liveness), ``/readyz`` (dependencies answer), ``/metrics`` (Prometheus text).
- Internal calls carry ``X-Montage-Internal`` (a shared secret) and ``X-Montage-User-Id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import signal
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
import structlog
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import Middleware
from montage_contracts.errors import (
    ErrorCode,
    MethodNotAllowed,
    MontageError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    ValidationError,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from montage_common import dependencies
from montage_common.metrics import HTTP_LATENCY, HTTP_REQUESTS
from montage_common.redis import REDIS_DOWN
from montage_common.settings import CommonSettings

log = structlog.get_logger()

HEADER_REQUEST_ID = "X-Request-ID"
HEADER_INTERNAL = "X-Montage-Internal"
HEADER_USER = "X-Montage-User-Id"
SERVER_NAME = "montage"  # the Server header: no framework or version
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

SERVICE: web.AppKey[str] = web.AppKey("service", str)
# The user a request acts for: set by the gateway after authentication; internal services take
# it from the gateway's X-Montage-User-Id. The access log reports it.
USER_ID: web.RequestKey[str | None] = web.RequestKey("user_id", str)
READY_CHECKS: web.AppKey[dict[str, Callable[[], Awaitable[object]]]] = web.AppKey("ready_checks", dict)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
ON_CONNECTION_LOST: web.RequestKey[list[Callable[[], None]]] = web.RequestKey("on_connection_lost", list)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_json = msgspec.json.Encoder()


def _dependency_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a dependency (Redis, Postgres) cannot be reached right now."""
    found: list[type[BaseException]] = [*REDIS_DOWN]
    with contextlib.suppress(ImportError):
        import asyncpg

        found += [
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError,
            asyncpg.ConnectionDoesNotExistError,
        ]
    return tuple(found)


DEPENDENCY_DOWN = _dependency_errors()


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


def error_response(err: MontageError) -> web.Response:
    return json_response(err.body(), status=err.status, headers=err.headers)


def unsafe_path(raw_path: str) -> str | None:
    """Why a raw request path must be refused, or ``None`` when it is safe to route.

    Each segment is percent-decoded up to three times (double and triple encoding) and must not
    become ``.`` or ``..`` (also after Unicode compatibility folding), contain a slash, a
    backslash or a control character, or be invalid UTF-8 (overlong forms such as ``%c0%ae``).
    """
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    for segment in path.split("/"):
        text = segment
        for _ in range(3):
            try:
                decoded = unquote_to_bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                return "invalid percent-encoding in the path"
            if unicodedata.normalize("NFKC", decoded) in (".", ".."):
                return "dot segments are not allowed in the path"
            if "\\" in decoded:
                return "backslashes are not allowed in the path"
            if "/" in decoded:  # the raw segment has none: it was encoded
                return "encoded slashes are not allowed in the path"
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded):
                return "control characters are not allowed in the path"
            if decoded == text:
                break
            text = decoded
    return None


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


access = structlog.get_logger("access")


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
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        refused = MethodNotAllowed(f"Method {request.method} not allowed on {request.path}", headers={"Allow": allow})
        return error_response(refused)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("Request body too large"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Its status stands; its code is from the catalogue: a refused request, or a server fault.
        code = ErrorCode.VALIDATION_ERROR if exc.status < 500 else ErrorCode.INTERNAL_ERROR
        return json_response({**MontageError(exc.reason).body(), "code": code}, status=exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except DEPENDENCY_DOWN as exc:
        log.warning("dependency_unavailable", path=request.path, error=type(exc).__name__)
        return error_response(ServiceUnavailable("A dependency is unavailable; retry shortly"))
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return error_response(MontageError())


@web.middleware
async def path_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse paths that another hop could resolve differently (see :func:`unsafe_path`)."""
    if (reason := unsafe_path(request.raw_path)) is not None:
        raise ValidationError(f"Invalid path: {reason}")
    return await handler(request)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def create_base_app(service: str, *, client_max_size: int = 1024**2) -> web.Application:
    """An application with the shared middlewares; its ops endpoints are :func:`create_ops_app`."""
    app = web.Application(
        middlewares=[request_id_middleware, observe_middleware, error_middleware, path_guard_middleware],
        client_max_size=client_max_size,
        handler_args={"max_field_size": MAX_FIELD_SIZE},
    )
    app[SERVICE] = service
    app[READY_CHECKS] = {}
    app[LIFECYCLE] = Lifecycle()
    app.on_response_prepare.append(_server_header)
    app.on_startup.append(_mark_started)  # runs after every cleanup_ctx has started
    app.on_shutdown.append(_mark_stopping)
    return app


# --- operational endpoints, on their own port -------------------------------------------
@dataclass
class Lifecycle:
    """Whether the API app has finished starting and has not begun stopping (readiness)."""

    started: bool = False
    stopping: bool = False


LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle", Lifecycle)
API_APP: web.AppKey[web.Application] = web.AppKey("api_app", web.Application)


async def _mark_started(app: web.Application) -> None:
    app[LIFECYCLE].started = True


async def _mark_stopping(app: web.Application) -> None:
    app[LIFECYCLE].stopping = True


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
    state = request.app[LIFECYCLE]
    if not state.started:
        results["startup"] = "starting"
    if state.stopping:
        results["shutdown"] = "stopping"
    ok = all(v == "ok" for v in results.values())
    return json_response({"status": "ready" if ok else "not_ready", "checks": results}, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(generate_latest)
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def create_ops_app(api: web.Application, probe_seconds: float | None = None) -> web.Application:
    """``/healthz``, ``/readyz`` and ``/metrics`` of ``api``, served on the ops port only.

    It shares the API app's readiness checks and lifecycle, so ``/readyz`` is 503 until the API
    app has started and again from the moment it begins shutting down. With ``probe_seconds`` it
    also pings the dependencies among those checks in the background (``montage_dependency_*``).
    """
    ops = web.Application(middlewares=[request_id_middleware, error_middleware])
    ops[SERVICE] = api[SERVICE]
    ops[READY_CHECKS] = api[READY_CHECKS]
    ops[LIFECYCLE] = api[LIFECYCLE]
    ops.on_response_prepare.append(_server_header)
    ops.router.add_get("/healthz", healthz)
    ops.router.add_get("/readyz", readyz)
    ops.router.add_get("/metrics", metrics)
    if probe_seconds is not None:
        checks = api[READY_CHECKS]  # the same dict: checks registered later are probed too
        ops.cleanup_ctx.append(dependencies.probe_context(checks, probe_seconds))
    return ops


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``; 400 ``VALIDATION_ERROR`` otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}")
    return value


def query_text(request: web.Request, name: str, max_length: int) -> str:
    """A free-text query parameter, stripped of spaces (``""`` when absent): 400
    ``VALIDATION_ERROR`` when it is longer than ``max_length`` or holds a control character,
    which Postgres text cannot store (NUL) and no search needs. Checked as sent, as the document
    describes it (:data:`montage_contracts.api.SearchText`)."""
    value = request.query.get(name, "")
    if len(value) > max_length:
        raise ValidationError(f"{name} is at most {max_length} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValidationError(f"{name} must not contain control characters")
    return value.strip()


def internal_user(request: web.Request, secret: str) -> str:
    """The user id the gateway vouched for; refuses identity headers not from the gateway."""
    check_internal(request, secret)
    user = request.headers.get(HEADER_USER, "")
    if not user:
        raise Unauthorized("Missing user identity")
    return user


def check_internal(request: web.Request, secret: str) -> None:
    """Refuse a request that does not carry the gateway's internal credential."""
    given = request.headers.get(HEADER_INTERNAL, "")
    if not given or not hmac.compare_digest(given.encode(), secret.encode()):
        raise Unauthorized("Missing or invalid internal credentials")


def internal_only(secret: str) -> Middleware:
    """A middleware for internal services: every route needs the gateway's credential.

    The network is not trusted alone: a request that reached an internal service some other way
    (a misrouted ingress, a compromised pod) is refused before any handler runs. Unknown routes
    still answer 404/405 so the credential's presence is not revealed by probing.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is None:
            check_internal(request, secret)
        return await handler(request)

    return middleware


# --- serving: the API and the ops port, and parser errors answered as JSON --------------
MAX_FIELD_SIZE = 16384  # one header line; the request line is capped by aiohttp at 8190 bytes


def parser_error_body(exc: BaseException | None, status: int) -> tuple[int, dict[str, Any]]:
    """The status and error body for a request the HTTP parser refused (never echoing it)."""
    if status >= 500:
        return status, MontageError().body()
    if isinstance(exc, LineTooLong):
        if str(exc.args[1]) == str(MAX_FIELD_SIZE):
            return 431, ValidationError("Request header too large").body()
        return 414, ValidationError("Request line too long").body()
    return 400, ValidationError("Malformed HTTP request").body()


def on_connection_lost(request: web.Request, callback: Callable[[], None]) -> None:
    """Call ``callback`` once if the client's connection closes while ``request`` is handled.

    The server does not cancel handlers when a client goes away (``handler_cancellation`` is
    off, as in ``web.run_app``), so a handler that waits on something else (an SSE stream waiting
    for events) would notice only at its next write. :func:`serve`'s connections call these
    callbacks from ``connection_lost``. A connection already gone gets the callback at once.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        asyncio.get_running_loop().call_soon(callback)
        return
    request.setdefault(ON_CONNECTION_LOST, []).append(callback)


class _RequestHandler(web_protocol.RequestHandler):
    def connection_lost(self, exc: BaseException | None) -> None:
        request = self._current_request
        super().connection_lost(exc)
        if request is not None:
            for callback in request.get(ON_CONNECTION_LOST, ()):
                try:
                    callback()
                except Exception:
                    log.exception("connection_lost_callback_failed")

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


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """aiohttp's runner whose connections answer unparseable requests with the error body."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state; only the per-connection handler class differs
        return server


async def serve(app: web.Application, settings: CommonSettings, *, port: int | None = None) -> None:
    """Serve ``app`` on its port and its ops endpoints on ``settings.ops_port`` until SIGTERM/SIGINT.

    As ``web.run_app`` does: handlers are not cancelled when a client goes away, and in-flight
    requests get ``shutdown_grace_seconds`` to finish after the signal.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace_seconds)
    ops: AppRunner | None = None
    await api.setup()
    try:
        if settings.ops_port:
            ops = AppRunner(
                create_ops_app(app, settings.dependency_probe_seconds), access_log=None, shutdown_timeout=1.0
            )
            await ops.setup()
            await web.TCPSite(ops, settings.host, settings.ops_port).start()
        await web.TCPSite(api, settings.host, port or settings.port).start()
        await stop.wait()
    finally:
        await api.cleanup()
        if ops is not None:
            await ops.cleanup()


def run(app: web.Application, settings: CommonSettings, *, port: int | None = None) -> None:
    """The entry point of every HTTP service (``python -m montage_<service>``)."""
    asyncio.run(serve(app, settings, port=port))
