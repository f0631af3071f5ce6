"""Admission at the door and fair turns, on the whole system as processes (real Redis, Postgres,
ffmpeg, workers). Where a test looks behind the gateway (job rows, stored files, the rate-limit
set) it says so.

- backlog: a stack of fixed, small capacity (one worker per stage, ``WORKER_CONCURRENCY=2``,
  ``USER_MAX_ACTIVE_JOBS=2``, ``ADMISSION_MAX_WAIT_SECONDS=20``) gets three rounds of uploads from
  three users, each round's three at once, while the audio_parser worker is stopped (SIGSTOP), so
  that the backlog stays where the uploads put it however fast this machine is. The forecast (the
  spec's stage durations on a fresh database: a whole job of the 14 s song is about 29 s of work)
  admits every user's first and second job and puts each user's third behind a whole job of its
  own: those uploads get 503 with ``Retry-After`` and leave nothing behind. Once the worker runs
  again every accepted job completes, none by ``TIMEOUT``, and the door opens again once the
  backlog is gone.
- fairness (on the suite's shared stack, ``USER_MAX_ACTIVE_JOBS=2``): A submits 5 jobs, then B 1;
  B's job starts before A's third.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from montage_cli.client import MontageClient
from montage_cli.errors import ApiError
from montage_common.redis import create_redis
from montage_contracts.keys import Keys

from tests.e2e.flows import PROMPT
from tests.stack import (
    E2E_ENV,
    ClientFactory,
    LoggedStack,
    RunningStack,
    _drop_namespace,
    _wait_healthy,
    dev_token,
    fresh_database,
    stack_on_free_ports,
    unique,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAX_WAIT = 20
BACKLOG_ENV = {
    **E2E_ENV,
    "USER_MAX_ACTIVE_JOBS": "2",
    "ADMISSION_MAX_WAIT_SECONDS": str(MAX_WAIT),
    "WORKER_CONCURRENCY": "2",  # read by the workers and by the orchestrator's forecast alike
    "JOB_TIMEOUT_SECONDS": "120",
}
FINAL = ("completed", "failed")


@dataclass(frozen=True)
class Backlog:
    url: str
    database_url: str
    redis_url: str
    keys: Keys
    storage_dir: Path
    stack: LoggedStack


@pytest.fixture(scope="module")
def backlog_stack(
    redis_url: str, server_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backlog]:
    var_dir = tmp_path_factory.mktemp("backlog-stack")
    namespace = f"adm{uuid.uuid4().hex[:10]}"
    with fresh_database(server_database_url, "montage_admission") as database_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "PYTEST_"))},
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "REDIS_NAMESPACE": namespace,
            "ENVIRONMENT": "development",
            "STORAGE_DIR": str(var_dir / "storage"),
        }
        stack = stack_on_free_ports(var_dir, env, BACKLOG_ENV, log_dir=var_dir / "logs")
        url = f"http://127.0.0.1:{stack.gateway_port}"
        try:
            stack.start(timeout=60)
            asyncio.run(_wait_healthy(url, stack, 90))
            yield Backlog(url, database_url, redis_url, Keys(namespace), var_dir / "storage", stack)
        finally:
            stack.stop()
            asyncio.run(_drop_namespace(redis_url, namespace))


async def _upload(client: MontageClient, song: Path) -> dict[str, Any] | ApiError:
    try:
        return await client.upload(song, PROMPT)
    except ApiError as err:
        return err


async def _final(client: MontageClient, job_id: str) -> dict[str, Any]:
    for _ in range(600):  # bounded: 600 x 0.25 s
        body = await client.job(job_id)
        if body["status"] in FINAL:
            return body
        await asyncio.sleep(0.25)
    raise AssertionError(f"job {job_id} did not finish: {body}")


async def test_a_backlog_is_refused_at_the_door_and_every_accepted_job_completes(
    backlog_stack: Backlog, song: Path
) -> None:
    users = [unique(f"burst{i}") for i in range(3)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        clients = {
            u: MontageClient(session, backlog_stack.url, await dev_token(session, backlog_stack.url, u)) for u in users
        }
        order = [u for _ in range(3) for u in users]  # each user's first, second, third upload
        answers: list[dict[str, Any] | ApiError] = []
        parser = backlog_stack.stack.procs["audio_parser"].pid
        os.killpg(parser, signal.SIGSTOP)  # the backlog stays put while the rounds arrive
        try:
            for _ in range(3):  # a round: every user's next upload, at once
                answers += await asyncio.gather(*(_upload(clients[u], song) for u in users))
        finally:
            os.killpg(parser, signal.SIGCONT)
        assert [isinstance(a, dict) for a in answers] == [True] * 6 + [False] * 3, answers
        accepted = {
            u: [a["job_id"] for o, a in zip(order, answers, strict=True) if o == u and isinstance(a, dict)]
            for u in users
        }
        refused = [a for a in answers if isinstance(a, ApiError)]
        assert refused, "the burst is more than the stack can start within the limit"
        for err in refused:
            assert err.status == 503 and err.code == "SERVICE_UNAVAILABLE", (err.status, err.body)
            assert err.body["retryable"] is True and err.body["job_id"] is None
            assert err.retry_after is not None and err.retry_after >= 1
            assert err.body["retry_after"] == int(err.retry_after)
            assert err.body["estimated_wait"] > MAX_WAIT
        assert all(accepted[u] for u in users)  # every user got work in

        # Behind the gateway: nothing of a refused upload is left: no row, no stored song, no slot.
        conn = await asyncpg.connect(backlog_stack.database_url)
        redis = create_redis(backlog_stack.redis_url)
        try:
            for u in users:
                rows = await conn.fetch("SELECT job_id::text AS id FROM jobs WHERE user_id = $1", u)
                assert sorted(r["id"] for r in rows) == sorted(accepted[u])
                stored = list((backlog_stack.storage_dir / "audio-uploads" / u).glob("*/*"))
                assert len(stored) == len(accepted[u])
                assert await redis.zcard(backlog_stack.keys.rate_limit(u)) == len(accepted[u])

            jobs = [j for u in users for j in accepted[u]]
            finals = await asyncio.gather(*(_final(clients[u], j) for u in users for j in accepted[u]))
            assert [f["status"] for f in finals] == ["completed"] * len(jobs), [f.get("error_code") for f in finals]
            rows = await conn.fetch(
                "SELECT created_at, started_at, deadline_at, error_code FROM jobs WHERE job_id = ANY($1::uuid[])", jobs
            )
            for r in rows:  # the timeout counted from the first stage's start, never from the upload
                assert r["error_code"] is None
                assert (r["deadline_at"] - r["started_at"]).total_seconds() == float(BACKLOG_ENV["JOB_TIMEOUT_SECONDS"])
                assert r["started_at"] >= r["created_at"]
        finally:
            await conn.close()
            await redis.aclose()

        # The backlog is gone: the door is open again for a user it refused.
        late = refused_user = next(o for o, a in zip(order, answers, strict=True) if isinstance(a, ApiError))
        again = await clients[late].upload(song, PROMPT)
        assert again["status"] == "queued"
        assert (await _final(clients[refused_user], again["job_id"]))["status"] == "completed"


async def test_one_users_backlog_does_not_delay_anothers_first_job(
    as_user: ClientFactory, e2e_stack: RunningStack, e2e_database_url: str, song: Path
) -> None:
    a, b = await as_user(unique("fair-a")), await as_user(unique("fair-b"))
    a_jobs = [(await a.upload(song, PROMPT))["job_id"] for _ in range(5)]
    b_job = (await b.upload(song, PROMPT))["job_id"]
    third = await a.job(a_jobs[2])
    if third["status"] == "queued":  # still waiting for a's first job: its place and expected start
        assert third["queue_position"] is not None and third["queue_position"] >= 1
        assert third["estimated_start"] is None or third["estimated_start"].endswith("Z")
    finals = await asyncio.gather(*(_final(a, j) for j in a_jobs), _final(b, b_job))
    assert [f["status"] for f in finals] == ["completed"] * 6
    # Behind the gateway: when each job's first stage started.
    conn = await asyncpg.connect(e2e_database_url)
    try:
        rows = await conn.fetch(
            "SELECT job_id::text AS id, started_at FROM jobs WHERE job_id = ANY($1::uuid[])", [*a_jobs, b_job]
        )
    finally:
        await conn.close()
    started = {r["id"]: r["started_at"] for r in rows}
    assert started[b_job] < started[a_jobs[2]]
    assert started[a_jobs[2]] <= started[a_jobs[3]] <= started[a_jobs[4]]
