"""What the stand-ins share besides their service's API: the bearer-key check, the test routes
(``/_control``, ``/_reset``, ``/_stats``, ``/healthz``) and the command line that serves one.

Each stand-in keeps its own service's answers (status codes, error bodies): these helpers only say
whether a call may pass, wire the routes and run the process.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_ok(request: web.Request, api_key: str) -> bool:
    """Whether ``request`` may pass: no key is set, or it carries ``Authorization: Bearer <api_key>``."""
    return not api_key or request.headers.get("Authorization") == f"Bearer {api_key}"


def add_test_routes(
    app: web.Application,
    name: str,
    *,
    control: Handler,
    stats: Callable[[], dict[str, Any]],
    reset: Handler | None = None,
) -> None:
    """The routes a stand-in answers besides its API (not part of any contract): ``POST /_control``,
    ``POST /_reset`` (when it has one), ``GET /_stats`` (``stats()``) and ``GET /healthz``."""
    headers = {"X-Development-Stand-In": name}

    async def stats_handler(request: web.Request) -> web.Response:
        return web.json_response(stats(), headers=headers)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": f"fake-{name}"}, headers=headers)

    app.router.add_post("/_control", control)
    if reset is not None:
        app.router.add_post("/_reset", reset)
    app.router.add_get("/_stats", stats_handler)
    app.router.add_get("/healthz", healthz)


def arguments(description: str, port: int, *, api_key: bool = False) -> argparse.ArgumentParser:
    """A stand-in's command line: ``--host``, ``--port`` (``port`` by default) and, with ``api_key``,
    ``--api-key``; the stand-in adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    if api_key:
        parser.add_argument("--api-key", default="", help="when set, other keys are refused with 401")
    return parser


def serve(app: web.Application, name: str, what: str, host: str, port: int, path: str = "") -> None:
    """Serve ``app`` until interrupted, after a line saying which stand-in listens where."""
    print(f"fake-{name}: DEVELOPMENT STAND-IN for {what} on http://{host}:{port}{path}", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None, shutdown_timeout=1.0)
