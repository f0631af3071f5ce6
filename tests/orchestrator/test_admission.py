"""Fair turns on a real orchestrator, Postgres and Redis: waiting jobs are rows without a task or a
deadline; they start when their user's slot frees, on any replica, without passing the limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from montage_contracts.messages import task_decoder
from montage_contracts.pipeline import STAGES
from montage_orchestrator import admission

from tests.orchestrator.conftest import Orchestrator, headers, wait_for

Factory = Callable[..., Awaitable[Orchestrator]]


@pytest.fixture(autouse=True)
async def _no_waiting_jobs_left(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """The session's tests share one database: a job left waiting would start under a later test's
    orchestrator (in that test's namespace). End them here, as a cancel would."""
    yield
    await pool.execute(
        "UPDATE jobs SET status = 'failed', error_code = 'CANCELLED', completed_at = now()"
        " WHERE status = 'queued' AND deadline_at IS NULL"
    )


def _user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def _dispatched(orch: Orchestrator, job_id: str) -> int:
    """Tasks of ``job_id`` in every stage stream."""
    r: Any = orch.deps.redis
    n = 0
    for stage in STAGES:
        for _, fields in await r.xrange(orch.deps.keys.stage_stream(stage)):
            if task_decoder.decode(fields[b"m"]).job_id == job_id:
                n += 1
    return n


async def _job(pool: asyncpg.Pool, job_id: str) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1::uuid", job_id)
    return row


async def test_jobs_past_the_users_limit_wait_without_a_task_and_start_when_a_slot_frees(
    orchestrator_factory: Factory, pool: asyncpg.Pool
) -> None:
    orch = await orchestrator_factory(workers=False, user_max_active_jobs=2)
    a, b = _user("a"), _user("b")
    a_jobs = [await orch.create_job(user=a) for _ in range(4)]
    b_job = await orch.create_job(user=b)
    rows = {j: await _job(pool, j) for j in [*a_jobs, b_job]}
    assert [rows[j]["status"] for j in a_jobs] == ["processing", "processing", "queued", "queued"]
    assert rows[b_job]["status"] == "processing"  # b's first job does not wait behind a's backlog
    for j in a_jobs[2:]:
        assert rows[j]["deadline_at"] is None and rows[j]["started_at"] is None
        assert await _dispatched(orch, j) == 0
        assert await pool.fetchval("SELECT count(*) FROM job_stages WHERE job_id = $1::uuid", j) == 0
    for j in [*a_jobs[:2], b_job]:
        assert await _dispatched(orch, j) == 1

    resp = await orch.session.post(f"{orch.url}/api/v1/jobs/{a_jobs[0]}/cancel", headers=headers(a))
    assert resp.status == 200  # a's slot frees: a's third job's turn, not the fourth's

    async def third_started() -> asyncpg.Record | None:
        row = await _job(pool, a_jobs[2])
        return row if row["status"] == "processing" else None

    third = await wait_for(third_started)

    async def sent() -> bool:  # the outbox sends the task right after the commit
        return await _dispatched(orch, a_jobs[2]) == 1

    await wait_for(sent)
    timeout = orch.deps.settings.job_timeout_seconds
    assert (third["deadline_at"] - third["started_at"]).total_seconds() == timeout  # counted from its start
    assert third["started_at"] >= (await _job(pool, a_jobs[0]))["completed_at"]
    assert (await _job(pool, a_jobs[3]))["status"] == "queued"
    evs = await orch.events(a_jobs[2])
    assert ("stage_update", {"stage": STAGES[0], "status": "started"}) in evs


async def test_waiting_never_times_out(orchestrator_factory: Factory, pool: asyncpg.Pool) -> None:
    """With a 1 s timeout and no workers the first job times out; the second waited meanwhile and its
    own second counts only from its start."""
    orch = await orchestrator_factory(workers=False, user_max_active_jobs=1, job_timeout_seconds=1.0)
    user = _user("patient")
    first = await orch.create_job(user=user)
    second = await orch.create_job(user=user)
    assert (await _job(pool, second))["status"] == "queued"

    async def final(job_id: str) -> asyncpg.Record | None:
        row = await _job(pool, job_id)
        return row if row["status"] == "failed" else None

    ended = await wait_for(lambda: final(first))
    later = await wait_for(lambda: final(second))
    assert ended["error_code"] == later["error_code"] == "TIMEOUT"
    assert later["started_at"] >= ended["completed_at"]  # it waited for the whole first job
    assert (later["deadline_at"] - later["started_at"]).total_seconds() == 1.0
    assert later["completed_at"] >= later["deadline_at"]


async def test_replicas_never_give_one_user_more_than_the_limit(
    orchestrator_factory: Factory, pool: asyncpg.Pool
) -> None:
    replicas = [await orchestrator_factory(workers=False, user_max_active_jobs=2) for _ in range(2)]
    users = [_user(f"u{i}") for i in range(3)]
    uploads = [replicas[k % 2].create_job(user=users[k % 3]) for k in range(12)]
    jobs = await asyncio.gather(*uploads)
    for _ in range(3):
        await asyncio.gather(*(admission.start_turns(r.deps) for r in replicas for _ in range(3)))
    rows = await pool.fetch("SELECT user_id, status FROM jobs WHERE job_id = ANY($1::uuid[])", jobs)
    for u in users:
        statuses = sorted(r["status"] for r in rows if r["user_id"] == u)
        assert statuses == ["processing", "processing", "queued", "queued"], (u, statuses)
