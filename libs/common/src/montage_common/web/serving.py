"""Serving: the API and the ops port until SIGTERM, each connection with the front door's
limits (:mod:`montage_common.web.connections`)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog
from aiohttp import web

from montage_common.settings import CommonSettings
from montage_common.web.connections import ConnectionLimits, FrontDoor, FrontDoorServer
from montage_common.web.context import SERVICE
from montage_common.web.ops import create_ops_app

log = structlog.get_logger()


class AppRunner(web.AppRunner):
    """aiohttp's runner whose connections keep ``limits`` (default: the settings' defaults, no
    per-client cap) and answer unparseable requests with the error body
    (:mod:`montage_common.web.connections` says how, and why this way)."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        limits = limits or ConnectionLimits.of(CommonSettings())
        kwargs["keepalive_timeout"] = limits.keepalive_timeout  # a supported RequestHandler argument
        super().__init__(app, **kwargs)
        self.front = FrontDoor(limits, app.get(SERVICE, "unnamed"))

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = FrontDoorServer  # same state; only the per-connection protocol class differs
        assert isinstance(server, FrontDoorServer)
        server.front = self.front
        return server


async def serve(
    app: web.Application, settings: CommonSettings, *, port: int | None = None, max_connections_per_client: int = 0
) -> None:
    """Serve ``app`` on its port and its ops endpoints on ``settings.ops_port`` until SIGTERM/SIGINT.

    As ``web.run_app`` does: handlers are not cancelled when a client goes away, and in-flight
    requests get ``shutdown_grace_seconds`` to finish after the signal. Both ports keep the
    settings' keep-alive and header-read timeouts; the API port caps each client's open
    connections at ``max_connections_per_client`` (0: no cap; see
    :mod:`montage_common.web.connections`).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    limits = ConnectionLimits.of(settings)
    api_limits = ConnectionLimits.of(settings, max_per_client=max_connections_per_client)
    api = AppRunner(app, limits=api_limits, access_log=None, shutdown_timeout=settings.shutdown_grace_seconds)
    ops: AppRunner | None = None
    try:
        # The ops port first: while the API app starts (e.g. waiting for its schema) the kubelet
        # sees /healthz alive and /readyz saying why it is not ready yet.
        if settings.ops_port:
            ops = AppRunner(
                create_ops_app(app, settings.dependency_probe_seconds),
                limits=limits,
                access_log=None,
                shutdown_timeout=1.0,
            )
            await ops.setup()
            await web.TCPSite(ops, settings.host, settings.ops_port).start()
        await api.setup()
        await web.TCPSite(api, settings.host, port or settings.port).start()
        await stop.wait()
    finally:
        await api.cleanup()
        if ops is not None:
            await ops.cleanup()


def run(
    app: web.Application, settings: CommonSettings, *, port: int | None = None, max_connections_per_client: int = 0
) -> None:
    """The entry point of every HTTP service (``python -m montage_<service>``)."""
    asyncio.run(serve(app, settings, port=port, max_connections_per_client=max_connections_per_client))
