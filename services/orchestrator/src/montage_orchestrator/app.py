"""The orchestrator application: ``create_app(settings)``.

The service's skeleton (the same in every service): ``app`` (this factory), ``deps`` (the
container, ``app[DEPS]``), ``routes`` (the handlers of its routes in ``montage_contracts.routes``), ``resources`` (one
``cleanup_ctx`` per resource, stopped and awaited on shutdown).
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

from montage_orchestrator import resources
from montage_orchestrator.routes import handlers
from montage_orchestrator.settings import OrchestratorSettings

SERVICE = "orchestrator"


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def create_app(settings: OrchestratorSettings) -> web.Application:
    problems = settings.problems()
    if problems:
        raise SystemExit("invalid configuration: " + "; ".join(problems))
    replica = settings.replica_id or default_replica_id()
    # The upload handler streams the body itself; this bound only covers other routes.
    app = create_base_app(SERVICE, client_max_size=settings.max_upload_bytes + 1024**2)
    app.middlewares.append(internal_only(settings.internal_secret))
    bind(app.router, served_by(Service.ORCHESTRATOR), handlers())
    app.cleanup_ctx.extend(
        [
            shared.postgres(
                settings.database_url,
                pool_size=settings.db_pool_size,
                migrations="montage_orchestrator" if settings.run_migrations else None,
                schema="montage_orchestrator",  # ready only once this release's migrations are applied
            ),
            shared.redis_client(settings, socket_timeout=10.0),
            resources.storage(settings),
            resources.container(settings),
            resources.results_consumers(settings, replica),
            resources.sweeper(settings, replica),
            resources.turns(settings),
            resources.user_events(settings),
            resources.webhook_sender(settings),
        ]
    )
    return app
