"""Fixtures of the Redis-failure suites: a Redis server of the module's own (so ``FLUSHALL``,
``SIGKILL`` and failovers disturb no other test), the orchestrator with fake stages on it, and
helpers to take one stage's fake worker out and put another in.

The session's ``redis_url`` is overridden here: every fixture below (and the orchestrator
fixtures reused from ``tests/orchestrator``) talks to this module's server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from montage_contracts.pipeline import STAGES
from montage_dev.devstack import EmbeddedRedis
from montage_streams import Delivery, Emit, StreamConsumer

from tests.gateway.conftest import emit, gateways, gw, make_settings, orchestrator, serve  # noqa: F401 (fixtures)
from tests.orchestrator.conftest import FakeStages, Orchestrator, orchestrator_factory  # noqa: F401 (fixture)

HEARTBEAT = 0.5  # JOB_HEARTBEAT_SECONDS of these tests: a lost stage is re-dispatched after ~2 x 1 s


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("own-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_url(own_redis: EmbeddedRedis) -> str:
    return own_redis.url


Handler = Callable[[Delivery], Awaitable[list[Emit]]]


async def swap_stage(fakes: FakeStages, stage: str, handler: Handler | None = None) -> StreamConsumer:
    """Stop the fake worker of ``stage`` and start another on the same group (``handler``: its
    handler, wrapping the fake's own; default the fake's own). Returns the new consumer."""
    i = STAGES.index(stage)
    old = fakes.consumers[i]
    old.stop()
    await asyncio.wait_for(fakes._runs[i], 10)
    return await start_stage(fakes, stage, handler)


async def stop_stage(fakes: FakeStages, stage: str) -> None:
    i = STAGES.index(stage)
    fakes.consumers[i].stop()
    await asyncio.wait_for(fakes._runs[i], 10)


async def start_stage(fakes: FakeStages, stage: str, handler: Handler | None = None) -> StreamConsumer:
    i = STAGES.index(stage)
    c = StreamConsumer(
        redis=fakes.redis,
        stream=fakes.keys.stage_stream(stage),
        group=fakes.keys.stage_group(stage),
        handler=handler or fakes.handler(stage),
        keys=fakes.keys,
        consumer=f"fake-{stage}-2",
        concurrency=4,
        block_ms=100,
        grace=0.2,
    )
    fakes.consumers[i] = c
    fakes._runs[i] = asyncio.create_task(c.run())
    await c.started.wait()
    return c


def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "storage"
