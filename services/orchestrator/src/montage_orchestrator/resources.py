"""The orchestrator's resources, one ``cleanup_ctx`` each, started in this order and stopped in
the reverse one: the Postgres pool (and migrations) and the Redis client (both from
``montage_common.resources``), storage, the container
(``app[DEPS]``), the results consumers (one per partition), the sweeper, the turn-giver, the users'
event logs, the webhook delivery loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web
from montage_common.resources import POOL, REDIS, Context
from montage_common.storage import Storage, create_storage
from montage_contracts.keys import ORCHESTRATOR_GROUP
from montage_streams import RetryPolicy, StreamConsumer

from montage_orchestrator import admission, webhooks
from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.pipeline import Pipeline
from montage_orchestrator.settings import OrchestratorSettings
from montage_orchestrator.sweeper import Sweeper

log = structlog.get_logger()

STORAGE: web.AppKey[Storage] = web.AppKey("storage", Storage)

# A result whose transaction failed (Postgres blip) is retried quickly, then dead-lettered.
RESULT_RETRY = RetryPolicy(delays=(0.5, 1.0, 2.0, 4.0, 8.0))


def storage(settings: OrchestratorSettings) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = create_storage(settings)
        app[STORAGE] = store
        try:
            yield
        finally:
            await store.close()

    return ctx


def container(settings: OrchestratorSettings) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[DEPS] = Deps.build(settings, app[POOL], app[REDIS], app[STORAGE])
        yield

    return ctx


def results_consumers(settings: OrchestratorSettings, replica: str) -> Context:
    """One results consumer per partition (see ``montage_contracts.keys``), sharing the pipeline."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        deps = app[DEPS]
        pipeline = Pipeline(deps)
        consumers = [
            StreamConsumer(
                redis=deps.redis,
                stream=stream,
                group=ORCHESTRATOR_GROUP,
                handler=pipeline.handle,
                keys=deps.keys,
                consumer=replica,
                concurrency=settings.results_concurrency,
                claim_idle_ms=settings.claim_idle_ms,
                retry=RESULT_RETRY,
                grace=settings.shutdown_grace_seconds,
                on_handed_off=deps.user_events.notice,  # copy the events just logged to their users' logs
            )
            for stream in deps.keys.results_streams()
        ]
        tasks = [asyncio.create_task(c.run(), name=f"results-consumer-{i}") for i, c in enumerate(consumers)]
        log.info("orchestrator_started", replica=replica, environment=settings.environment)
        try:
            yield
        finally:
            for c in consumers:
                c.stop()
            await _finish(tasks, settings.shutdown_grace_seconds + 1)

    return ctx


def sweeper(settings: OrchestratorSettings, replica: str) -> Context:
    return _loop("sweeper", lambda deps, stop: Sweeper(deps, replica).run(stop), settings.shutdown_grace_seconds + 1)


def user_events(settings: OrchestratorSettings) -> Context:
    """The copy of job events into their users' logs (``user_events``)."""
    return _loop("user-events", lambda deps, stop: deps.user_events.run(stop), settings.shutdown_grace_seconds + 1)


def turns(settings: OrchestratorSettings) -> Context:
    """The turn-giver (``admission.run``): waiting jobs start when a slot frees."""
    return _loop("turns", admission.run, settings.shutdown_grace_seconds + 1)


def webhook_sender(settings: OrchestratorSettings) -> Context:
    """The webhook delivery loop (``webhooks.Sender``): the outbox rows due, on every replica."""
    return _loop("webhooks", lambda deps, stop: webhooks.Sender(deps).run(stop), settings.webhook_timeout_seconds + 1)


def _loop(name: str, run: Callable[[Deps, asyncio.Event], Coroutine[Any, Any, None]], grace: float) -> Context:
    """``run(deps, stop)`` as a task named ``name`` while the app lives; at shutdown ``stop`` is set,
    and the task is cancelled if it has not ended ``grace`` seconds later."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(run(app[DEPS], stop), name=name)
        try:
            yield
        finally:
            stop.set()
            await _finish([task], grace)

    return ctx


async def _finish(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Wait for ``tasks`` to end by themselves for ``grace`` seconds, then cancel the rest."""
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for t in pending:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
