"""Crash safety: a killed orchestrator's job completes after a restart, nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from montage_common import events
from montage_common.storage import LocalStorage
from montage_contracts.api import StageUpdateData
from montage_contracts.keys import Keys
from montage_contracts.messages import StageResult, encode
from montage_contracts.pipeline import STAGES, StageUpdate
from montage_dev.devstack import free_port
from montage_orchestrator.pipeline import Pipeline
from montage_streams import Delivery
from redis.asyncio import Redis

from tests.orchestrator.conftest import (
    FakeStages,
    Orchestrator,
    Reply,
    canned_output,
    headers,
    orchestrator_ready,
    process_env,
    spawn_orchestrator,
    upload_form,
    wait_for,
    wav_bytes,
)


async def test_killed_orchestrator_resumes_without_duplicates(
    redis_url: str, database_url: str, namespace: str, keys: Keys, redis: Redis, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    storage_dir = tmp_path / "storage"
    port, ops_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    ops = f"http://127.0.0.1:{ops_port}"
    fast = {
        "CLAIM_IDLE_MS": "1000",
        "SWEEP_INTERVAL_SECONDS": "0.2",
        "OUTBOX_GRACE_SECONDS": "1",
        "SHUTDOWN_GRACE_SECONDS": "1",
    }
    env = process_env(redis_url, database_url, namespace, storage_dir, port, ops_port, **fast)
    fakes = FakeStages(redis, keys, LocalStorage(storage_dir, "test-signing-key", "http://127.0.0.1:1"))
    hold = asyncio.Event()
    fakes.behaviour["video_generator"] = lambda t: Reply(hold=hold, costs=["0.10", "0.20"], progress=["rendering"])
    await fakes.start()
    log = tmp_path / "orchestrator.log"
    proc = spawn_orchestrator(env, log)
    session = aiohttp.ClientSession()
    try:
        await wait_for(lambda: orchestrator_ready(session, ops))
        resp = await session.post(f"{url}/api/v1/upload-audio", data=upload_form(wav_bytes()), headers=headers())
        assert resp.status == 201, await resp.text()
        job_id = (await resp.json())["job_id"]
        await wait_for(lambda: _has(fakes, "video_generator"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hold.set()  # results, progress and costs arrive while no orchestrator runs
        r: Any = redis
        await wait_for(lambda: _stream_len_at_least(r, keys.results_stream(), 1))
        proc = spawn_orchestrator(env, log)
        await wait_for(lambda: orchestrator_ready(session, ops))

        async def completed() -> bool:
            return await pool.fetchval("SELECT status FROM jobs WHERE job_id = $1::uuid", job_id) == "completed"

        await wait_for(completed)
        rows = await pool.fetch("SELECT call_id, cost FROM job_costs WHERE job_id = $1::uuid", job_id)
        assert len(rows) == 7 and len({r["call_id"] for r in rows}) == 7
        total = await pool.fetchval("SELECT total_cost FROM jobs WHERE job_id = $1::uuid", job_id)
        assert total == sum(r["cost"] for r in rows)

        async def final_event() -> list[tuple[str, Any]] | None:
            evs = [(e.event, e.data) for _, e in await events.replay(redis, keys, job_id)]
            return evs if evs and evs[-1][0] == "completed" else None

        evs = await wait_for(final_event)
        done = [d.stage for _, d in evs if isinstance(d, StageUpdateData) and d.status == StageUpdate.COMPLETED]
        assert done == list(STAGES)
        assert len([e for e, _ in evs if e == "cost_update"]) == 7
        assert len([t for t in fakes.tasks if t.stage == "composer"]) == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await session.close()
        await fakes.stop()


async def _has(fakes: FakeStages, stage: str) -> bool:
    return any(t.stage == stage for t in fakes.tasks)


async def _stream_len_at_least(r: Any, stream: str, n: int) -> bool:
    return int(await r.xlen(stream)) >= n


async def test_redelivered_result_resends_the_recorded_emits(orchestrator_factory: Any, pool: asyncpg.Pool) -> None:
    """A crash between the commit and the ack: the same entry handled again re-sends, never redoes."""
    orch: Orchestrator = await orchestrator_factory(workers=False)
    job_id = await orch.create_job()
    out = canned_output("audio_parser", job_id)
    from decimal import Decimal

    import msgspec
    from montage_contracts.models import CostItem

    result = StageResult(
        job_id=job_id,
        stage="audio_parser",
        ok=True,
        output=msgspec.Raw(msgspec.json.encode(out)),
        costs=[CostItem(call_id="c1", api_name="fake", amount=Decimal("0.25"))],
    )
    d = Delivery(orch.deps.keys.results_stream(), "orchestrator", "1-1", "m1", 1, 2, encode(result))
    pipeline = Pipeline(orch.deps)
    first = await pipeline.handle(d)
    second = await pipeline.handle(d)
    assert first and [(e.stream, e.payload, e.message_id) for e in first] == [
        (e.stream, e.payload, e.message_id) for e in second
    ]
    assert await pool.fetchval("SELECT count(*) FROM job_costs WHERE job_id = $1::uuid", job_id) == 1
    assert await pool.fetchval("SELECT total_cost FROM jobs WHERE job_id = $1::uuid", job_id) == Decimal("0.25")
    # the same result in another entry (a duplicate delivery of the task) is stale: ignored
    dup = Delivery(orch.deps.keys.results_stream(), "orchestrator", "1-2", "m1", 1, 1, encode(result))
    assert await pipeline.handle(dup) == []


def test_migrate_command_applies_then_is_a_no_op(server_database_url: str) -> None:
    """``python -m montage_common.migrate`` as the Kubernetes migrate Job runs it, on a fresh database."""
    from tests.stack import fresh_database

    with fresh_database(server_database_url, "montage_migrate") as url:
        env = {**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "json"}
        runs = [
            subprocess.run(
                [sys.executable, "-m", "montage_common.migrate", "montage_orchestrator", "montage_ragnarok"],
                env=env,
                capture_output=True,
                timeout=120,
            )
            for _ in range(2)
        ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    first, second = (msgspec.json.decode(r.stderr.splitlines()[-1]) for r in runs)
    assert first["count"] >= 4 and second["count"] == 0
