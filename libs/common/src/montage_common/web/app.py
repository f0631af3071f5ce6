"""The application factory every service builds its API app with: the shared middlewares in
order (request id, access line and metrics, errors as the spec's body, the path guard), the
header-line limit, and the lifecycle the ops port's ``/readyz`` reads."""

from __future__ import annotations

from aiohttp import web

from montage_common.web.context import MAX_FIELD_SIZE, READY_CHECKS, SERVICE
from montage_common.web.errors import error_middleware
from montage_common.web.guard import path_guard_middleware
from montage_common.web.observe import observe_middleware, request_id_middleware, server_header
from montage_common.web.ops import LIFECYCLE, Lifecycle, mark_started, mark_stopping


def create_base_app(service: str, *, client_max_size: int = 1024**2) -> web.Application:
    """An application with the shared middlewares; its ops endpoints are
    :func:`montage_common.web.ops.create_ops_app`."""
    app = web.Application(
        middlewares=[request_id_middleware, observe_middleware, error_middleware, path_guard_middleware],
        client_max_size=client_max_size,
        handler_args={"max_field_size": MAX_FIELD_SIZE},
    )
    app[SERVICE] = service
    app[READY_CHECKS] = {}
    app[LIFECYCLE] = Lifecycle()
    app.on_response_prepare.append(server_header)
    app.on_startup.append(mark_started)  # runs after every cleanup_ctx has started
    app.on_shutdown.append(mark_stopping)
    return app
