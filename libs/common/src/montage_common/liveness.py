"""Liveness that follows the process's work, not only its ability to answer HTTP.

A :class:`Watchdog` holds named *beats*: callables returning when something last turned
(``time.monotonic()``), each with its bound. The event loop is always one of them (a ticker task
of the watchdog's own, :meth:`Watchdog.run`); a service adds its own (a worker: its heartbeat
loop, its consumers' claim renewals, each running task's report). ``/healthz`` on the ops port
(:func:`montage_common.web.healthz`) answers 503 with the late beats when any is past its bound,
so Kubernetes' liveness probe (or the devstack's supervisor) restarts a process whose loop is
wedged or whose loops stopped turning, and its stream entries are reclaimed by the others after
``CLAIM_IDLE_MS``. A process stopped outright (SIGSTOP, a blocked loop) does not answer at all,
which the probe's timeout turns into the same failure.

Beats measure that a loop *turned*, not that its Redis call succeeded: a Redis outage must not
restart every worker at once (a restart does not bring Redis back).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web

LOOP_TICK_SECONDS = 1.0


class Watchdog:
    """Named beats and their bounds; see the module docstring."""

    def __init__(self, loop_bound_seconds: float) -> None:
        self.loop_bound = loop_bound_seconds
        self.loop_at = time.monotonic()
        self._beats: dict[str, tuple[Callable[[], float | None], float]] = {}

    def watch(self, name: str, last: Callable[[], float | None], bound_seconds: float) -> None:
        """``last()``: when ``name`` last turned (monotonic), or ``None`` when it has nothing to report."""
        self._beats[name] = (last, bound_seconds)

    def problems(self, now: float | None = None) -> list[str]:
        """The beats past their bound, as ``"<name>: <seconds> s late"``; empty when alive."""
        now = time.monotonic() if now is None else now
        found: list[str] = []
        if now - self.loop_at > self.loop_bound:
            found.append(f"event_loop: no turn for {now - self.loop_at:.1f} s")
        for name, (last, bound) in self._beats.items():
            at = last()
            if at is not None and now - at > bound:
                found.append(f"{name}: no turn for {now - at:.1f} s (bound {bound:.0f} s)")
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Tick the event loop's beat until ``stop``."""
        while not stop.is_set():
            self.loop_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOOP_TICK_SECONDS)


WATCHDOG: web.AppKey[Watchdog] = web.AppKey("watchdog", Watchdog)
