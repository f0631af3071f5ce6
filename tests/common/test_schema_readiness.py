"""A service is ready only when the schema its release needs is present.

The real orchestrator, as a process on a real Postgres, with ``RUN_MIGRATIONS=false`` (as in
Kubernetes, where the migration Job applies them): on a database one migration behind, its
``/readyz`` answers 503 naming the missing migration (its liveness stays 200, so the kubelet
does not restart it); once the Job's command has run, it becomes ready.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from montage_common import db
from montage_dev.devstack import free_port

from tests.stack import fresh_database

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("montage_orchestrator", "montage_ragnarok")


@pytest.fixture
def database(server_database_url: str) -> Iterator[str]:
    with fresh_database(server_database_url, "montage_schema") as url:
        yield url


async def apply_all_but_the_newest(url: str) -> str:
    """The previous release's schema: every migration except the newest of the orchestrator."""
    files = db.migration_files(*PACKAGES)
    newest = max(name for name, _ in db.migration_files("montage_orchestrator"))
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz DEFAULT now())"
        )
        for name, sql in files:
            if name != newest:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
    finally:
        await conn.close()
    return newest


async def probe(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.json()
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


async def until(session: aiohttp.ClientSession, url: str, want: int, limit: float) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + limit
    result: tuple[int, dict[str, Any]] = (0, {})
    while time.monotonic() < deadline:  # bounded by the deadline
        result = await probe(session, url)
        if result[0] == want:
            return result
        await asyncio.sleep(0.2)
    return result


async def test_an_older_schema_is_not_ready_until_the_migration_job_runs(
    database: str, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    newest = await apply_all_but_the_newest(database)
    ops_port = free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "REDIS_NAMESPACE": namespace,
        "RUN_MIGRATIONS": "false",
        "PORT": str(free_port()),
        "OPS_PORT": str(ops_port),
        "INTERNAL_SECRET": "schema-test-secret",
        "STORAGE_DIR": str(tmp_path / "storage"),
        "LOG_FORMAT": "json",
    }
    proc = subprocess.Popen([sys.executable, "-m", "montage_orchestrator"], env=env, cwd=ROOT, start_new_session=True)
    try:
        async with aiohttp.ClientSession() as session:
            ops = f"http://127.0.0.1:{ops_port}"
            status, body = await until(session, f"{ops}/healthz", 200, 60)
            assert status == 200, "the ops port answers while the schema is awaited"
            deadline = time.monotonic() + 60
            status, body = await probe(session, f"{ops}/readyz")
            while "schema" not in body.get("checks", {}) and time.monotonic() < deadline:  # the pool connects
                await asyncio.sleep(0.2)
                status, body = await probe(session, f"{ops}/readyz")
            assert status == 503, body
            assert newest in body["checks"]["schema"], body
            await asyncio.sleep(1)  # still not ready a moment later: nothing else will apply it
            status, body = await probe(session, f"{ops}/readyz")
            assert status == 503 and proc.poll() is None, body

            # The migration Job's command (deploy/k8s/base/migrate-job.yaml).
            job = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "montage_common.migrate", *PACKAGES, env={**env, "LOG_FORMAT": "json"}
            )
            assert await asyncio.wait_for(job.wait(), 120) == 0

            status, body = await until(session, f"{ops}/readyz", 200, 60)
            assert status == 200, body
            assert body["checks"]["schema"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def test_the_previous_release_stays_ready_on_a_newer_schema(pool: asyncpg.Pool) -> None:
    """Migrations only add: the pool fixture's database has every migration, so any package's
    (a subset's) check passes, as the old pods' do during a rollout."""
    await db.migrate(pool, *PACKAGES)
    assert await db.missing_migrations(pool, "montage_orchestrator") == []
    assert await db.missing_migrations(pool, "montage_ragnarok") == []
