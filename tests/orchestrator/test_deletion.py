"""Deleting a job (owner and operator): files, rows and Redis keys gone, billing kept, 404 everywhere,
idempotent, another user's job untouchable; a running job is cancelled first."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from tests.orchestrator.conftest import Orchestrator, Reply, headers, wait_for

ADMIN = {"X-Montage-Role": "admin"}


def files_of(storage_dir: Path, job_id: str) -> list[Path]:
    return [p for p in storage_dir.rglob("*") if p.is_file() and job_id in str(p)]


async def keys_of(redis: Redis, namespace: str, job_id: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=f"*{job_id}*", count=1000) if namespace.encode() in k]


async def test_owner_deletes_a_completed_job(
    orchestrator_factory: Any, pool: asyncpg.Pool, redis: Redis, namespace: str, tmp_path: Path
) -> None:
    orch: Orchestrator = await orchestrator_factory()
    job_id = await orch.create_job()
    done = await orch.wait_final(job_id)
    assert done["status"] == "completed" and done["video_url"]
    storage_dir = tmp_path / "storage"
    assert files_of(storage_dir, job_id), "the job stored nothing"

    async def copied() -> bool:  # its events are in its owner's log too (GET /api/v1/events)
        user_log = await redis.xrange(orch.deps.keys.user_events_stream("user-1"))
        return any(fields[b"j"].decode() == job_id for _, fields in user_log)

    await wait_for(copied)
    assert await keys_of(redis, namespace, job_id), "the job has no Redis keys"
    total = await pool.fetchval("SELECT total_cost FROM jobs WHERE job_id = $1::uuid", job_id)
    spent_before = (await (await orch.session.get(f"{orch.url}/internal/usage", headers=headers())).json())[
        "spent_this_month"
    ]
    url = f"{orch.url}/api/v1/jobs/{job_id}"

    other = await orch.session.delete(url, headers=headers("someone-else"))
    assert other.status == 404 and (await other.json())["code"] == "NOT_FOUND"
    assert files_of(storage_dir, job_id)

    resp = await orch.session.delete(url, headers=headers())
    assert resp.status == 204 and await resp.read() == b""
    assert files_of(storage_dir, job_id) == []
    assert await keys_of(redis, namespace, job_id) == []
    user_log = await redis.xrange(orch.deps.keys.user_events_stream("user-1"))
    assert all(fields[b"j"].decode() != job_id for _, fields in user_log)
    assert not await redis.hexists(orch.deps.keys.user_event_cursors("user-1"), job_id)
    for table in ("jobs", "job_stages", "job_costs", "webhook_deliveries", "orchestrator_outbox", "job_cleanup_log"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE job_id = $1::uuid", job_id) == 0, table
    # what billing keeps: the charges' amounts under the job id and its owner, nothing the user wrote
    tomb = await pool.fetchrow("SELECT * FROM deleted_jobs WHERE job_id = $1::uuid", job_id)
    assert tomb["user_id"] == "user-1" and tomb["deleted_by"] == "user" and tomb["total_cost"] == total
    kept = await pool.fetchval("SELECT sum(cost) FROM deleted_job_costs WHERE job_id = $1::uuid", job_id)
    assert kept == total
    usage = await (await orch.session.get(f"{orch.url}/internal/usage", headers=headers())).json()
    assert usage["spent_this_month"] == spent_before

    # 404 on every route
    for method, path in (
        ("GET", ""),
        ("GET", "/download"),
        ("POST", "/cancel"),
        ("POST", "/retry"),
    ):
        r = await orch.session.request(method, url + path, headers=headers())
        assert r.status == 404, (method, path, r.status)
    listed = await (await orch.session.get(f"{orch.url}/api/v1/jobs?limit=50", headers=headers())).json()
    assert job_id not in [j["job_id"] for j in listed["jobs"]]
    # idempotent for its owner; still nothing for anyone else
    again = await orch.session.delete(url, headers=headers())
    assert again.status == 204
    other = await orch.session.delete(url, headers=headers("someone-else"))
    assert other.status == 404


async def test_deleting_a_running_job_cancels_it_first(
    orchestrator_factory: Any, pool: asyncpg.Pool, redis: Redis, namespace: str, tmp_path: Path
) -> None:
    orch: Orchestrator = await orchestrator_factory()
    hold = asyncio.Event()
    orch.fakes.behaviour["scene_planner"] = lambda _t: Reply(hold=hold)
    job_id = await orch.create_job()

    async def planning() -> bool:
        return any(t.job_id == job_id and t.stage == "scene_planner" for t in orch.fakes.tasks)

    await wait_for(planning)
    resp = await orch.session.delete(f"{orch.url}/api/v1/jobs/{job_id}", headers=headers())
    assert resp.status == 204
    hold.set()  # the worker finishes its step: it sees the cancel flag, its result finds no job
    await asyncio.sleep(0.5)
    assert await pool.fetchval("SELECT count(*) FROM jobs WHERE job_id = $1::uuid", job_id) == 0
    assert files_of(tmp_path / "storage", job_id) == []
    left = await keys_of(redis, namespace, job_id)
    # only the cancel flag stays (until it expires) so a worker still on the job stops
    assert [k.decode() for k in left] == [orch.deps.keys.job_cancel(job_id)], left
    r = await orch.session.get(f"{orch.url}/api/v1/jobs/{job_id}", headers=headers())
    assert r.status == 404


async def test_operator_deletes_any_job_and_it_is_logged(orchestrator_factory: Any, pool: asyncpg.Pool) -> None:
    orch: Orchestrator = await orchestrator_factory()
    job_id = await orch.create_job(user="u-del")
    url = f"{orch.url}/api/v1/admin/jobs/{job_id}"
    assert (await orch.session.delete(url, headers=headers("u-del"))).status == 403  # not an admin
    resp = await orch.session.delete(url, headers={**headers("ops-9"), **ADMIN})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["job_id"] == job_id and body["outcome"] == "deleted"
    again = await (await orch.session.delete(url, headers={**headers("ops-9"), **ADMIN})).json()
    assert again["outcome"] == "already_deleted"
    r = await orch.session.get(f"{orch.url}/api/v1/jobs/{job_id}", headers=headers("u-del"))
    assert r.status == 404
    missing = await orch.session.delete(
        f"{orch.url}/api/v1/admin/jobs/00000000-0000-4000-8000-000000000000", headers={**headers("ops-9"), **ADMIN}
    )
    assert missing.status == 404
    rows = await pool.fetch("SELECT outcome, detail FROM admin_actions WHERE actor = 'ops-9' ORDER BY id")
    assert [r["outcome"] for r in rows] == ["done", "done", "not_found"]
    tomb = await pool.fetchrow("SELECT deleted_by, user_id FROM deleted_jobs WHERE job_id = $1::uuid", job_id)
    assert tomb["deleted_by"] == "operator:ops-9" and tomb["user_id"] == "u-del"
