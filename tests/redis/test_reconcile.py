"""Postgres is the source of truth; Redis may forget (issue 15).

The orchestrator runs in-process with fake stage workers (``tests/orchestrator/conftest.py``)
on a Redis of this module's own, with ``JOB_HEARTBEAT_SECONDS=0.5``: a stage with no task, no
result and no live worker in Redis is dispatched again after about 2 x 1 s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from montage_contracts.messages import task_decoder
from montage_contracts.pipeline import STAGES
from montage_stages.worker import job_liveness
from montage_streams import Delivery, Emit
from redis.asyncio import Redis

from tests.orchestrator.conftest import Orchestrator, Reply, wait_for
from tests.redis.conftest import HEARTBEAT, start_stage, stop_stage, swap_stage

Factory = Callable[..., Awaitable[Orchestrator]]


def slow(seconds: float) -> Callable[[Any], Reply]:
    """A fake stage that takes ``seconds`` per task (so a FLUSHALL finds work in flight)."""

    def reply(_task: Any) -> Reply:
        done = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, done.set)
        return Reply(hold=done)

    return reply


async def dispatches(pool: asyncpg.Pool, job_id: str) -> dict[str, int]:
    rows = await pool.fetch("SELECT stage_name, dispatch FROM job_stages WHERE job_id = $1", uuid.UUID(job_id))
    return {r["stage_name"]: r["dispatch"] for r in rows}


async def wait_final(orch: Orchestrator, job_id: str, limit: float = 120.0) -> dict[str, Any]:
    """The job once final (a liveness guard, not a performance bound)."""

    async def final() -> dict[str, Any] | None:
        body = await orch.job(job_id)
        return body if body["status"] in ("completed", "failed") else None

    result: dict[str, Any] = await wait_for(final, attempts=int(limit / 0.1), every=0.1)
    return result


async def test_flushall_in_the_middle_of_ten_jobs(orchestrator_factory: Factory, redis: Redis) -> None:
    orch = await orchestrator_factory(job_heartbeat_seconds=HEARTBEAT)
    for stage in STAGES:
        orch.fakes.behaviour[stage] = slow(0.4)
    jobs = [await orch.create_job() for _ in range(10)]
    pool = orch.deps.pool

    async def spread() -> bool:  # jobs at several stages, none finished yet
        rows = await pool.fetch(
            "SELECT current_stage, status FROM jobs WHERE job_id = ANY($1::uuid[])", [uuid.UUID(j) for j in jobs]
        )
        return len({r["current_stage"] for r in rows}) >= 2 and all(r["status"] != "completed" for r in rows)

    await wait_for(spread, attempts=600, every=0.05)
    await redis.flushall()

    finals = [await wait_final(orch, j) for j in jobs]
    assert [f["status"] for f in finals] == ["completed"] * 10, finals
    costs = await pool.fetch(
        "SELECT job_id, stage_name, count(*) AS n, sum(cost) AS total FROM job_costs"
        " WHERE job_id = ANY($1::uuid[]) GROUP BY job_id, stage_name",
        [uuid.UUID(j) for j in jobs],
    )
    assert len(costs) == 10 * len(STAGES), costs
    assert all(r["n"] == 1 for r in costs), [dict(r) for r in costs if r["n"] != 1]
    totals = await pool.fetch(
        "SELECT total_cost FROM jobs WHERE job_id = ANY($1::uuid[])", [uuid.UUID(j) for j in jobs]
    )
    assert {str(r["total_cost"]) for r in totals} == {"0.600000"} or {float(r["total_cost"]) for r in totals} == {0.6}
    redone = [s for j in jobs for s, n in (await dispatches(pool, j)).items() if n > 1]
    assert redone, "the FLUSHALL lost no work in flight: the test did not test the reconciler"


async def test_lost_stage_task_is_dispatched_again(orchestrator_factory: Factory, redis: Redis) -> None:
    orch = await orchestrator_factory(job_heartbeat_seconds=HEARTBEAT)
    stage = "prompt_generator"
    await stop_stage(orch.fakes, stage)
    started = time.monotonic()
    job = await orch.create_job()
    stream = orch.deps.keys.stage_stream(stage)

    async def queued() -> list[Any]:
        r: Any = redis
        entries: list[Any] = await r.xrange(stream)
        return entries

    entries = await wait_for(queued, attempts=600, every=0.05)
    assert await redis.xdel(stream, entries[0][0]) == 1  # the write Redis "lost"
    lost_at = time.monotonic()
    await start_stage(orch.fakes, stage)

    final = await wait_final(orch, job)
    assert final["status"] == "completed", final
    took = time.monotonic() - lost_at
    assert (await dispatches(orch.deps.pool, job))[stage] == 2
    # later than normal (a stage silent for 2 heartbeats, then noticed), well before the timeout
    assert took >= 2 * HEARTBEAT
    assert time.monotonic() - started < orch.deps.settings.job_timeout_seconds / 10


async def test_a_live_worker_keeps_its_stage_after_redis_forgot_the_task(
    orchestrator_factory: Factory, redis: Redis
) -> None:
    """No re-dispatch while a worker reports the stage alive; once it stops (its result could not
    be handed off: Redis forgot the task), the stage is dispatched again and the job completes."""
    orch = await orchestrator_factory(job_heartbeat_seconds=HEARTBEAT)
    stage = "video_generator"
    release = asyncio.Event()
    running = asyncio.Event()
    fake = orch.fakes.handler(stage)

    async def live(d: Delivery) -> list[Emit]:
        task = task_decoder.decode(d.payload)
        async with job_liveness(redis, orch.deps.keys, task, HEARTBEAT):
            if task.dispatch == 1:
                running.set()
                await release.wait()
            return await fake(d)

    await swap_stage(orch.fakes, stage, live)
    job = await orch.create_job()
    await asyncio.wait_for(running.wait(), 60)
    stream = orch.deps.keys.stage_stream(stage)
    await redis.delete(stream)  # the task and its group are gone; the worker still runs it
    await asyncio.sleep(8 * HEARTBEAT)
    assert (await dispatches(orch.deps.pool, job))[stage] == 1  # its heartbeat kept it
    release.set()
    final = await wait_final(orch, job)
    assert final["status"] == "completed", final
    assert (await dispatches(orch.deps.pool, job))[stage] == 2


async def test_a_live_worker_that_makes_no_progress_is_replaced(orchestrator_factory: Factory, redis: Redis) -> None:
    """The worker reports the stage alive but never moves on (a handler waiting for a wake-up that
    never comes, its claim renewed): after STAGE_STALL_SECONDS the stage is dispatched again, the
    stuck task leaves the stream, and the job completes; no TIMEOUT."""
    orch = await orchestrator_factory(job_heartbeat_seconds=HEARTBEAT, stage_stall_seconds=2.0)
    stage = "video_generator"
    wedged = asyncio.Event()
    release = asyncio.Event()
    fake = orch.fakes.handler(stage)

    async def stuck_once(d: Delivery) -> list[Emit]:
        task = task_decoder.decode(d.payload)
        async with job_liveness(redis, orch.deps.keys, task, HEARTBEAT):
            if task.dispatch == 1:
                wedged.set()
                await release.wait()  # alive, heartbeating, never progressing
            return await fake(d)

    await swap_stage(orch.fakes, stage, stuck_once)
    try:
        job = await orch.create_job()
        await asyncio.wait_for(wedged.wait(), 60)
        final = await wait_final(orch, job)
        stream = orch.deps.keys.stage_stream(stage)
        r: Any = redis
        left = [e for e in await r.xrange(stream) if task_decoder.decode(e[1][b"m"]).dispatch == 1]
    finally:
        release.set()
    assert final["status"] == "completed", final
    assert (await dispatches(orch.deps.pool, job))[stage] == 2
    assert not left  # the stuck dispatch's task was removed (its worker's hand-off is refused)


async def test_a_stage_stuck_on_every_dispatch_fails_the_job_clearly(
    orchestrator_factory: Factory, redis: Redis
) -> None:
    orch = await orchestrator_factory(job_heartbeat_seconds=HEARTBEAT, stage_stall_seconds=1.5, stage_max_dispatches=2)
    stage = "composer"
    release = asyncio.Event()

    async def always_stuck(d: Delivery) -> list[Emit]:
        async with job_liveness(redis, orch.deps.keys, task_decoder.decode(d.payload), HEARTBEAT):
            await release.wait()
        return []

    await swap_stage(orch.fakes, stage, always_stuck)
    try:
        job = await orch.create_job()
        final = await wait_final(orch, job)
    finally:
        release.set()
    assert final["status"] == "failed", final
    assert final["error_code"] == "MODULE_FAILURE", final
    assert "composer made no progress" in final["error_message"] and "dispatched 2 times" in final["error_message"]
    assert (await dispatches(orch.deps.pool, job))[stage] == 2
