"""Errors as the spec's body ``{"error", "code", "retryable", "job_id"}``: the JSON responses,
the middleware that maps every exception to one, and the body of a request the HTTP parser
refused.

- :class:`MontageError` (and aiohttp's own HTTP errors) become their status and body.
- A dependency that is down (Redis, Postgres) is a 503 ``SERVICE_UNAVAILABLE``.
- Anything else unexpected is logged and answered 500 with that body, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from montage_contracts.errors import (
    ErrorCode,
    MethodNotAllowed,
    MontageError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationError,
)

from montage_common.redis import REDIS_DOWN
from montage_common.web.context import MAX_FIELD_SIZE, Handler

log = structlog.get_logger()
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


def parser_error_body(exc: BaseException | None, status: int) -> tuple[int, dict[str, Any]]:
    """The status and error body for a request the HTTP parser refused (never echoing it)."""
    if status >= 500:
        return status, MontageError().body()
    if isinstance(exc, LineTooLong):
        if str(exc.args[1]) == str(MAX_FIELD_SIZE):
            return 431, ValidationError("Request header too large").body()
        return 414, ValidationError("Request line too long").body()
    return 400, ValidationError("Malformed HTTP request").body()
