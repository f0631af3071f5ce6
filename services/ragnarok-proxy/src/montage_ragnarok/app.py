"""The ragnarok-proxy application: ``create_app(settings)``.

The service's skeleton (the same in every service): ``app`` (this factory), ``deps`` (the
container, ``app[DEPS]``), ``routes`` (the Nexus endpoints), ``resources`` (one ``cleanup_ctx``
per resource, the poller last).
"""

from __future__ import annotations

import os
import secrets
import socket

from aiohttp import web
from montage_common import resources as shared
from montage_common.routing import bind
from montage_common.web import create_base_app, internal_only
from montage_contracts.routes import Service, served_by

from montage_ragnarok import resources
from montage_ragnarok.routes import NexusHandlers, trace_errors_middleware, trace_middleware
from montage_ragnarok.settings import ProxySettings

SERVICE = "ragnarok-proxy"


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def create_app(settings: ProxySettings) -> web.Application:
    problems = settings.problems()
    if problems:
        raise SystemExit("invalid configuration: " + "; ".join(problems))
    replica_id = settings.replica_id or default_replica_id()
    app = create_base_app(SERVICE)
    # trace ids: bound outside the error mapping (so its log lines carry them), added to error bodies inside it
    app.middlewares.insert(1, trace_middleware)
    app.middlewares.append(trace_errors_middleware)
    app.middlewares.append(internal_only(settings.internal_secret))
    bind(app.router, served_by(Service.RAGNAROK), NexusHandlers(settings).handlers())
    app.cleanup_ctx.extend(
        [
            shared.postgres(
                settings.database_url,
                pool_size=settings.db_pool_size,
                migrations="montage_ragnarok" if settings.run_migrations else None,
                schema="montage_ragnarok",  # ready only once this release's migrations are applied
            ),
            shared.redis_client(settings),
            resources.http_session,
            resources.container(settings, replica_id),
            resources.poller(settings, replica_id),
        ]
    )
    return app
