"""Fair turns on a real orchestrator, Postgres and Redis: waiting jobs are rows without a task or a
deadline; they start when their user's slot frees, on any replica, without passing the limit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
import pytest
from montage_contracts.messages import task_decoder
from montage_contracts.pipeline import PIPELINE, STAGES
from montage_orchestrator import admission, turns
from montage_orchestrator.deps import Deps, Forecasts
from montage_orchestrator.jobs import StageRates

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


async def test_the_door_refuses_before_reading_the_body_and_leaves_nothing(
    orchestrator_factory: Factory, pool: asyncpg.Pool
) -> None:
    """Its first job sits in audio_parser (no workers): a second job of the user would wait for the
    whole of it (about 4 s of work for a 2 s song at the priors), past the 1 s limit."""
    orch = await orchestrator_factory(workers=False, user_max_active_jobs=1, admission_max_wait_seconds=1.0)
    user = _user("door")
    first = await orch.create_job(user=user)
    resp = await orch.upload(user=user)
    assert resp.status == 503, await resp.text()
    body = await resp.json()
    assert body["code"] == "SERVICE_UNAVAILABLE" and body["retryable"] is True and body["job_id"] is None
    assert body["estimated_wait"] >= 1 and body["retry_after"] >= 1
    assert resp.headers["Retry-After"] == str(body["retry_after"])
    assert await pool.fetchval("SELECT array_agg(job_id::text) FROM jobs WHERE user_id = $1", user) == [first]
    stored = _files(orch, user)
    assert len(stored) == 1 and first in stored[0]
    # Only the headers and a little of a 5 MB body: the answer comes without the rest being sent.
    status, head = await _first_answer(orch, user, declared=5 * 1024 * 1024, sent=1024)
    assert status == 503 and "retry-after" in head
    other = await orch.upload(user=_user("someone-else"))  # another user has a free slot: admitted
    assert other.status == 201, await other.text()


def _files(orch: Orchestrator, user: str) -> list[str]:
    root = Path(orch.deps.settings.storage_dir) / "audio-uploads" / user
    return [str(p) for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def _first_answer(orch: Orchestrator, user: str, *, declared: int, sent: int) -> tuple[int, dict[str, str]]:
    host, _, port = orch.url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [
            "POST /api/v1/upload-audio HTTP/1.1",
            f"Host: {host}",
            "Content-Type: multipart/form-data; boundary=B",
            f"Content-Length: {declared}",
            *(f"{k}: {v}" for k, v in headers(user).items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + b"--B\r\n" + b"x" * sent)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    status_line, *rest = raw.decode("latin-1").split("\r\n")
    head = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in rest if line)}
    return int(status_line.split()[1]), head


async def test_a_waiting_job_shows_its_place_and_expected_start(orchestrator_factory: Factory) -> None:
    orch = await orchestrator_factory(workers=False, user_max_active_jobs=1, admission_max_wait_seconds=0)
    user = _user("line")
    first = await orch.create_job(user=user)
    second = await orch.create_job(user=user)
    third = await orch.create_job(user=user)
    running = await orch.job(first, user=user)
    assert running["status"] == "processing" and running["queue_position"] is None
    assert running["estimated_start"] is None
    waiting = [await orch.job(j, user=user) for j in (second, third)]
    assert [w["status"] for w in waiting] == ["queued", "queued"]
    assert [w["queue_position"] for w in waiting] == [1, 2]
    starts = [w["estimated_start"] for w in waiting]
    assert all(s.endswith("Z") and len(s) == len("2026-01-01T12:00:00.000Z") for s in starts)
    assert starts[0] < starts[1] and starts[0] > running["created_at"]
    listed = await (await orch.session.get(f"{orch.url}/api/v1/jobs", headers=headers(user))).json()
    by_id = {j["job_id"]: j for j in listed["jobs"]}
    assert by_id[third]["queue_position"] == 2 and by_id[third]["estimated_start"] >= starts[0]
    assert by_id[first]["queue_position"] is None and by_id[first]["estimated_start"] is None


def test_rates_are_read_often_until_every_stage_is_measured() -> None:
    """A fresh deployment reads its measured rates every few seconds until each stage has one (for
    its first minutes), then once a minute."""
    rates = StageRates(refresh_seconds=60.0, cold_refresh_seconds=5.0, cold_window_seconds=600.0)
    assert rates._interval() == 5.0
    rates.measured = {s.name: 0.1 for s in PIPELINE[:-1]}
    assert rates._interval() == 5.0  # one stage still on its prior
    rates.measured = {s.name: 0.1 for s in PIPELINE}
    assert rates._interval() == 60.0
    rates.measured, rates.cold_until = {}, time.monotonic() - 1.0
    assert rates._interval() == 60.0  # past the first minutes: once a minute whatever is measured


async def test_readings_ending_out_of_order_never_lose_an_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two uploads read the system at once and the older reading ends last: it lacks the row of an
    upload admitted between the two, which the newer one's door has forgotten (its reading holds it).
    The older one's door is answered with the newer reading, which stays the shared one."""
    each = tuple(10.0 for _ in STAGES)
    slots = dict.fromkeys(STAGES, 1)
    at = datetime.now(UTC)
    without_x = admission.System(at, [], [], slots, each)
    with_x = admission.System(at, [turns.Running("x", "other", STAGES[0], 0.0, each)], [], slots, each)
    readings = iter([("older", without_x), ("newer", with_x)])
    gates = {"older": asyncio.Event(), "newer": asyncio.Event()}
    begun: list[str] = []

    async def read_system(deps: Deps) -> admission.System:
        name, system = next(readings)
        begun.append(name)
        await gates[name].wait()
        return system

    monkeypatch.setattr(admission, "read_system", read_system)
    space = f"door-{uuid.uuid4().hex[:6]}"
    monkeypatch.setitem(admission._admitted, space, {})
    deps = cast(
        Deps,
        SimpleNamespace(settings=SimpleNamespace(redis_namespace=space, user_max_active_jobs=1), forecasts=Forecasts()),
    )

    older = asyncio.ensure_future(admission.new_job_wait(deps, "u"))
    await asyncio.sleep(0.01)
    # x's row is committed after the older reading began, before the newer one
    admission._admitted[space][-1] = admission._Admitted("other", done_at=time.monotonic(), seconds=20.0)
    await asyncio.sleep(0.01)
    newer = asyncio.ensure_future(admission.new_job_wait(deps, "u"))
    await asyncio.sleep(0.01)
    assert begun == ["older", "newer"]
    gates["newer"].set()
    assert await newer == 10.0  # behind x in the first stage
    assert admission._admitted[space] == {}  # x forgotten: the newer reading holds it
    gates["older"].set()
    assert await older == 10.0  # was 0.0: x neither in the older reading nor admitted any more
    assert deps.forecasts.latest is not None and deps.forecasts.latest[0] is with_x
    assert await admission.new_job_wait(deps, "u") == 10.0  # the shared reading, not read again
