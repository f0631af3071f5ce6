"""The gateway application: ``create_app(settings)``.

The service's skeleton (the same in every service): ``app`` (this factory), ``deps`` (the
container, ``app[GATEWAY]``), ``routes`` (what is served and forwarded, and who may call it),
``resources`` (one ``cleanup_ctx`` per resource).
"""

from __future__ import annotations

from aiohttp import web
from montage_common import resources as shared
from montage_common.web import create_base_app

from montage_gateway import resources
from montage_gateway.cors import Cors
from montage_gateway.routes import access_middleware, add_routes
from montage_gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings) -> web.Application:
    app = create_base_app("gateway", client_max_size=settings.max_body_bytes)
    cors = Cors(settings.allowed_origins)
    app.middlewares.extend([cors.preflight, access_middleware])
    app.on_response_prepare.append(cors.on_prepare)
    app.on_shutdown.append(resources.close_streams)
    app.cleanup_ctx.extend(
        [
            shared.redis_client(settings, max_connections=settings.redis_max_connections, pool_wait_seconds=10.0),
            resources.http_session(settings),
            resources.components(settings),
            resources.background_tasks,
        ]
    )
    add_routes(app, settings)
    return app
