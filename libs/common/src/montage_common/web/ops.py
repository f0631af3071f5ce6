"""The operational endpoints, on their own port (``OPS_PORT``), never on the API port:
``/healthz`` (liveness), ``/readyz`` (dependencies answer, and the API app has started and is
not stopping), ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from montage_common import dependencies
from montage_common.liveness import WATCHDOG
from montage_common.web.context import READY_CHECKS, SERVICE
from montage_common.web.errors import error_middleware, json_response
from montage_common.web.observe import request_id_middleware, server_header


@dataclass
class Lifecycle:
    """Whether the API app has finished starting and has not begun stopping (readiness)."""

    started: bool = False
    stopping: bool = False


LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle", Lifecycle)
API_APP: web.AppKey[web.Application] = web.AppKey("api_app", web.Application)


async def mark_started(app: web.Application) -> None:
    app[LIFECYCLE].started = True


async def mark_stopping(app: web.Application) -> None:
    app[LIFECYCLE].stopping = True


async def healthz(request: web.Request) -> web.Response:
    """Alive, unless the app's watchdog (``montage_common.liveness``) has a beat past its bound."""
    watchdog = request.app.get(WATCHDOG)
    problems = watchdog.problems() if watchdog is not None else []
    if problems:
        return json_response({"status": "unhealthy", "service": request.app[SERVICE], "problems": problems}, 503)
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
    if WATCHDOG in api:
        ops[WATCHDOG] = api[WATCHDOG]
    ops.on_response_prepare.append(server_header)
    ops.router.add_get("/healthz", healthz)
    ops.router.add_get("/readyz", readyz)
    ops.router.add_get("/metrics", metrics)
    if probe_seconds is not None:
        checks = api[READY_CHECKS]  # the same dict: checks registered later are probed too
        ops.cleanup_ctx.append(dependencies.probe_context(checks, probe_seconds))
    return ops
