"""Serving: the API and the ops port until SIGTERM, and the connections they accept.

aiohttp's server is extended at one point: the per-connection protocol (``RequestHandler``),
which answers a request the HTTP parser refused with the spec's error body (not aiohttp's plain
text echoing the input) and tells a handler when its client's connection closes
(:func:`on_connection_lost`).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web, web_protocol

from montage_common.settings import CommonSettings
from montage_common.web.context import HEADER_REQUEST_ID, ON_CONNECTION_LOST, SERVER_NAME
from montage_common.web.errors import parser_error_body
from montage_common.web.ops import create_ops_app

log = structlog.get_logger()
_json = msgspec.json.Encoder()


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
    try:
        # The ops port first: while the API app starts (e.g. waiting for its schema) the kubelet
        # sees /healthz alive and /readyz saying why it is not ready yet.
        if settings.ops_port:
            ops = AppRunner(
                create_ops_app(app, settings.dependency_probe_seconds), access_log=None, shutdown_timeout=1.0
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


def run(app: web.Application, settings: CommonSettings, *, port: int | None = None) -> None:
    """The entry point of every HTTP service (``python -m montage_<service>``)."""
    asyncio.run(serve(app, settings, port=port))
