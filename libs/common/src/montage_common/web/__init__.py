"""aiohttp scaffolding shared by every service, one room per job:

- :mod:`~montage_common.web.app`: the API app factory (the shared middlewares, in order);
- :mod:`~montage_common.web.observe`: what every request and response carries (``X-Request-ID``,
  the access line and request metrics, the ``Server`` header);
- :mod:`~montage_common.web.errors`: every error as the spec's body (a dependency down is 503,
  anything unexpected 500 without internals; a request the HTTP parser refused);
- :mod:`~montage_common.web.guard`: the request guard (unsafe paths, the gateway's internal
  credential, query parameters);
- :mod:`~montage_common.web.ops`: ``/healthz``, ``/readyz`` and ``/metrics`` on their own port;
- :mod:`~montage_common.web.connections`: each accepted connection and its limits (keep-alive and
  header-read timeouts, a cap per client), and why aiohttp's protocol class is replaced;
- :mod:`~montage_common.web.serving`: serving both ports until SIGTERM.

The names below are the surface services import; the rooms may move things between them.
"""

from montage_common.web.app import create_base_app
from montage_common.web.connections import ConnectionLimits, on_connection_lost
from montage_common.web.context import (
    HEADER_INTERNAL,
    HEADER_REQUEST_ID,
    HEADER_USER,
    MAX_FIELD_SIZE,
    ON_CONNECTION_LOST,
    READY_CHECKS,
    REQUEST_ID,
    SERVER_NAME,
    SERVICE,
    USER_ID,
    Handler,
)
from montage_common.web.errors import DEPENDENCY_DOWN, error_middleware, error_response, json_response
from montage_common.web.guard import (
    check_internal,
    internal_only,
    internal_user,
    path_guard_middleware,
    query_int,
    query_text,
    unsafe_path,
)
from montage_common.web.observe import observe_middleware, request_id_middleware
from montage_common.web.ops import API_APP, LIFECYCLE, Lifecycle, create_ops_app, run_ready_checks
from montage_common.web.serving import AppRunner, run, serve

__all__ = [
    "API_APP",
    "DEPENDENCY_DOWN",
    "HEADER_INTERNAL",
    "HEADER_REQUEST_ID",
    "HEADER_USER",
    "LIFECYCLE",
    "MAX_FIELD_SIZE",
    "ON_CONNECTION_LOST",
    "READY_CHECKS",
    "REQUEST_ID",
    "SERVER_NAME",
    "SERVICE",
    "USER_ID",
    "AppRunner",
    "ConnectionLimits",
    "Handler",
    "Lifecycle",
    "check_internal",
    "create_base_app",
    "create_ops_app",
    "error_middleware",
    "error_response",
    "internal_only",
    "internal_user",
    "json_response",
    "observe_middleware",
    "on_connection_lost",
    "path_guard_middleware",
    "query_int",
    "query_text",
    "request_id_middleware",
    "run",
    "run_ready_checks",
    "serve",
    "unsafe_path",
]
