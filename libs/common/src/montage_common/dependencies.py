"""Whether Redis and Postgres answer, as metrics: ``montage_dependency_up{dependency}`` and
``montage_dependency_ping_seconds{dependency}``.

``/readyz`` answers the kubelet, but Prometheus sees only what a service exports: without these
an outage showed only as a 5xx ratio. Each service pings the dependencies it uses (the same
checks as ``/readyz``: ``app[READY_CHECKS]``) every ``DEPENDENCY_PROBE_SECONDS`` in the
background, each ping bounded by :data:`PING_TIMEOUT_SECONDS`; a ping that raises or times out
sets ``up`` to 0 and ``ping_seconds`` to the time it took. The alerts (``MontageRedisDown``,
``MontagePostgresDown``, ``MontageDependencyUnreachable``, ``MontageDependencySlow``) are in
``tools/monitoring.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import structlog
from aiohttp import web
from prometheus_client import Gauge

log = structlog.get_logger()

DEPENDENCIES = ("redis", "postgres")  # the readiness checks that are dependencies (not e.g. "schema")
PING_TIMEOUT_SECONDS = 2.0
UP = Gauge("montage_dependency_up", "1 when the last ping of the dependency answered, else 0", ["dependency"])
PING = Gauge("montage_dependency_ping_seconds", "How long the last ping of the dependency took", ["dependency"])

Check = Callable[[], Awaitable[object]]


async def ping(name: str, check: Check, limit_seconds: float = PING_TIMEOUT_SECONDS) -> bool:
    """One bounded ping of ``name``; records both gauges and returns whether it answered."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), limit_seconds)
        answered = True
    except Exception as exc:  # any failure is "down"; the error is logged once per ping
        answered = False
        log.warning("dependency_ping_failed", dependency=name, error=f"{type(exc).__name__}: {exc}"[:200])
    PING.labels(name).set(time.perf_counter() - started)
    UP.labels(name).set(1 if answered else 0)
    return answered


async def probe(checks: Mapping[str, Check], stop: asyncio.Event, interval: float) -> None:
    """Ping every dependency in ``checks`` every ``interval`` seconds until ``stop`` is set."""
    while not stop.is_set():
        present = [(n, c) for n, c in list(checks.items()) if n in DEPENDENCIES]
        await asyncio.gather(*(ping(n, c) for n, c in present))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def probe_context(checks: Mapping[str, Check], interval: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` running :func:`probe` for the app's lifetime; stopped by its event, then
    awaited at most a ping's bound longer before it is cancelled."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(probe(checks, stop, interval), name="dependency-probe")
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(TimeoutError):  # wait_for cancels it
                await asyncio.wait_for(task, PING_TIMEOUT_SECONDS + 1.0)

    return ctx
