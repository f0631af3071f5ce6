"""Cleanup deletes exactly what the policy says, and nothing else."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from montage_contracts.keys import Keys
from montage_orchestrator import cleanup
from redis.asyncio import Redis

from tests.orchestrator.conftest import Orchestrator


async def _quiet(factory: Any, **overrides: Any) -> Orchestrator:
    """An orchestrator whose sweeper does not run the scheduled cleanup (the lease is taken)."""
    orch: Orchestrator = await factory(workers=False, **overrides)
    return orch


async def _put(orch: Orchestrator, *keys: str) -> None:
    for key in keys:
        await orch.deps.storage.put_bytes(key, b"x")


async def _job(pool: asyncpg.Pool, status: str, expire_days: float | None, user: str = "cu") -> str:
    job_id = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO jobs (job_id, user_id, status, user_prompt, audio_key, audio_filename, audio_duration,"
        " environment, cost_limit, deadline_at, completed_at, files_expire_at)"
        " VALUES ($1::uuid, $2, $3, 'p', 'k', 'f', 1, 'development', 50, now(), now(),"
        " CASE WHEN $4::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $4::float8 * 86400) END)",
        job_id,
        user,
        status,
        expire_days,
    )
    return job_id


def _files(job_id: str, user: str = "cu") -> list[str]:
    return [
        f"audio-uploads/{user}/{job_id}/song.wav",
        f"reference-images/{job_id}/scene.png",
        f"video-clips/{job_id}/clip_0.mp4",
        f"video-outputs/{job_id}/final_video.mp4",
    ]


async def test_scheduled_cleanup_policy(
    orchestrator_factory: Any, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await redis.set(keys.lease("cleanup"), "test", ex=3600)
    orch = await _quiet(orchestrator_factory, orphan_grace_seconds=0)
    completed_fresh = await _job(pool, "completed", 13)  # video kept, leftover intermediates go
    completed_old = await _job(pool, "completed", -0.1)  # past 14 days: everything goes
    failed_fresh = await _job(pool, "failed", 6)  # kept 7 days: nothing goes
    failed_old = await _job(pool, "failed", -0.1)  # everything goes
    running = await _job(pool, "processing", None)  # untouched
    orphan = str(uuid.uuid4())  # no job row
    for j in (completed_fresh, completed_old, failed_fresh, failed_old, running, orphan):
        await _put(orch, *_files(j))
    await _put(orch, "video-clips/not-a-job/x.mp4")

    report = await cleanup.run(orch.deps)

    remaining = {o.key for b in ("audio-uploads", "reference-images", "video-clips", "video-outputs")
                 for o in await orch.deps.storage.list(f"{b}/")}  # fmt: skip
    expected = {
        f"audio-uploads/cu/{completed_fresh}/song.wav",
        f"video-outputs/{completed_fresh}/final_video.mp4",
        *_files(failed_fresh),
        *_files(running),
    }
    assert remaining == expected
    assert report.expired_jobs == 2
    cleaned = {str(r["job_id"]) for r in await pool.fetch("SELECT job_id FROM jobs WHERE files_cleaned_at IS NOT NULL")}
    assert {completed_old, failed_old} <= cleaned and not {completed_fresh, failed_fresh, running} & cleaned
    log = await pool.fetch("SELECT job_id, object_key, status, reason FROM job_cleanup_log")
    by_key = {r["object_key"]: r for r in log}
    for key in _files(orphan):
        assert by_key[key]["reason"] == "orphan" and by_key[key]["status"] == "deleted"
    assert by_key[f"video-clips/{completed_fresh}/clip_0.mp4"]["reason"] == "intermediate"
    for key in _files(failed_old):
        assert by_key[key]["reason"] == "expired"
    assert not any(k in by_key for k in _files(failed_fresh) + _files(running))
    # a second run finds nothing more to do
    again = await cleanup.run(orch.deps)
    assert again.deleted == 0 and again.failed == 0 and again.expired_jobs == 0


async def test_failed_deletes_are_logged_and_retried(
    orchestrator_factory: Any, pool: asyncpg.Pool, redis: Redis, keys: Keys
) -> None:
    await redis.set(keys.lease("cleanup"), "test", ex=3600)
    orch = await _quiet(orchestrator_factory, orphan_grace_seconds=0)
    job = await _job(pool, "failed", -1)
    await _put(orch, *_files(job))
    storage: Any = orch.deps.storage
    real_delete = storage.delete

    async def broken(keys: list[str]) -> None:
        raise OSError("storage down")

    storage.delete = broken
    report = await cleanup.run(orch.deps)
    assert report.expired_jobs == 0 and report.failed == 4
    failed = await pool.fetchval(
        "SELECT count(*) FROM job_cleanup_log WHERE job_id = $1::uuid AND status = 'failed'", job
    )
    assert failed >= 4
    assert await pool.fetchval("SELECT files_cleaned_at FROM jobs WHERE job_id = $1::uuid", job) is None
    storage.delete = real_delete
    report = await cleanup.run(orch.deps)
    assert report.expired_jobs == 1
    for key in _files(job):
        assert not await storage.exists(key)


async def test_orphans_younger_than_the_grace_are_kept(orchestrator_factory: Any, redis: Redis, keys: Keys) -> None:
    await redis.set(keys.lease("cleanup"), "test", ex=3600)
    orch = await _quiet(orchestrator_factory, orphan_grace_seconds=3600)
    key = f"audio-uploads/u/{uuid.uuid4()}/song.wav"  # an upload whose job row is not written yet
    await _put(orch, key)
    await cleanup.run(orch.deps)
    assert await orch.deps.storage.exists(key)


async def test_scheduled_run_is_leased(orchestrator_factory: Any) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False)
    await orch.deps.redis.delete(orch.deps.keys.lease("cleanup"))
    assert await cleanup.run_if_due(orch.deps, "a") is not None
    assert await cleanup.run_if_due(orch.deps, "b") is None
