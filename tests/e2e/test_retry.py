"""Retry without paying twice, through the whole stack (every service its own process, real Redis,
Postgres and ffmpeg): a job fails at ``composer`` (a fault injected for that job only, see
``montage_stages.faults``), ``POST /api/v1/jobs/{id}/retry`` makes a new job that reuses the five
finished stages, runs only ``composer``, completes with a playable video, and is charged nothing
for the reused stages; the original stays as it was.

Behind the gateway the test reads Postgres (``job_stages``, ``job_costs``), the stage streams and
the stage workers' logs (``tests/artifacts/e2e-logs``), to see that no earlier stage ran again.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from montage_cli.client import MontageClient
from montage_cli.errors import ApiError
from montage_common.redis import create_redis
from montage_contracts.keys import Keys
from montage_contracts.pipeline import STAGES

from tests.e2e.flows import PROMPT, follow_to_end
from tests.stack import LOG_DIR, ClientFactory, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EARLIER = list(STAGES[:-1])  # every stage before composer


async def _costs(conn: asyncpg.Connection, job_id: str) -> dict[str, Decimal]:
    rows = await conn.fetch(
        "SELECT stage_name, sum(cost) AS cost FROM job_costs WHERE job_id = $1 GROUP BY stage_name", uuid.UUID(job_id)
    )
    return {r["stage_name"]: r["cost"] for r in rows}


async def _stream_mentions(stack: RunningStack, job_id: str) -> dict[str, int]:
    """How many entries of each stage's streams (every partition) carry ``job_id``."""
    keys = Keys(stack.namespace)
    redis = create_redis(stack.redis_url)
    found: dict[str, int] = defaultdict(int)
    try:
        for stage in STAGES:
            for stream in keys.stage_streams(stage):
                for _, fields in await redis.xrange(stream):
                    if any(job_id.encode() in bytes(v) for v in fields.values()):
                        found[stage] += 1
    finally:
        await redis.aclose()
    return dict(found)


async def _slots(stack: RunningStack, user: str) -> int:
    """The user's taken job-creation slots (the gateway's sliding window in Redis)."""
    redis = create_redis(stack.redis_url)
    try:
        return int(await redis.zcard(Keys(stack.namespace).rate_limit(user)))
    finally:
        await redis.aclose()


def _logged_stages(job_id: str) -> set[str]:
    """The stage workers whose log names ``job_id`` in a ``stage_started`` line."""
    out = set()
    for stage in STAGES:
        log = LOG_DIR / f"{stage}.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if job_id in line and "stage_started" in line:
                out.add(stage)
    return out


async def _fail_at_composer(stack: RunningStack, client: MontageClient, song: Path) -> str:
    job_id = str((await client.upload(song, PROMPT))["job_id"])
    redis = create_redis(stack.redis_url)
    try:  # composer runs seconds after the upload: the fault is in place long before
        await redis.set(Keys(stack.namespace).stage_fault(job_id, "composer"), "composer made to fail by the test")
    finally:
        await redis.aclose()
    events = await follow_to_end(client, job_id)
    assert events[-1].event == "error", [e.event for e in events[-3:]]
    return job_id


async def test_retry_after_a_composer_failure_runs_only_composer(
    e2e_stack: RunningStack, as_user: ClientFactory, song: Path, e2e_database_url: str, tmp_path: Path
) -> None:
    user = unique("rita")
    client = await as_user(user)
    old = await _fail_at_composer(e2e_stack, client, song)
    failed = await client.job(old)
    assert failed["status"] == "failed" and failed["error_code"] == "MODULE_FAILURE", failed
    assert "injected fault" in failed["error_message"] and failed["retried_by"] is None

    conn = await asyncpg.connect(e2e_database_url)
    try:
        paid_before = await _costs(conn, old)
        assert set(EARLIER) <= set(paid_before), paid_before  # every earlier stage was charged

        retried = await client.retry(old)
        new = retried["job_id"]
        assert new != old and retried["retry_of"] == old and retried["status"] == "queued"
        assert retried["resumed_from"] == "composer" and retried["reused_stages"] == EARLIER

        # its progress over SSE, from its first event: only composer starts; it completes
        events = await follow_to_end(client, new)
        assert events[-1].event == "completed", [(e.event, e.data) for e in events[-3:]]
        started = [e.json()["stage"] for e in events if e.event == "stage_update" and e.json()["status"] == "started"]
        assert started == ["composer"]
        assert any(e.event == "message" and old in e.json()["text"] for e in events)
        video = await client.download(new, tmp_path)
        assert video.stat().st_size > 1000

        # no earlier stage ran again: never dispatched (job_stages), no task (streams), no worker log
        rows = await conn.fetch(
            "SELECT stage_name, status, dispatch, metadata::text AS metadata, output IS NOT NULL AS has_output"
            " FROM job_stages WHERE job_id = $1",
            uuid.UUID(new),
        )
        by_stage = {r["stage_name"]: r for r in rows}
        for stage in EARLIER:
            assert by_stage[stage]["dispatch"] == 0, stage
            assert json.loads(by_stage[stage]["metadata"])["reused_from"] == old
        assert by_stage["composer"]["dispatch"] == 1 and by_stage["composer"]["status"] == "completed"
        assert set(await _stream_mentions(e2e_stack, new)) <= {"composer"}
        assert _logged_stages(new) == {"composer"}
        assert _logged_stages(old) >= set(EARLIER)  # the check can see the stages that ran

        # the earlier stages are charged once: to the original, never to the retry
        assert await _costs(conn, old) == paid_before
        paid_new = await _costs(conn, new)
        assert set(paid_new) <= {"composer"}, paid_new
        total_new = await conn.fetchval("SELECT total_cost FROM jobs WHERE job_id = $1", uuid.UUID(new))
        assert total_new == sum(paid_new.values(), Decimal(0))
        # the new job's files are its own: the reused clips were copied under its prefix
        clips = json.loads(
            await conn.fetchval(
                "SELECT output::text FROM job_stages WHERE job_id = $1 AND stage_name = 'video_generator'",
                uuid.UUID(new),
            )
        )["clips"]
        assert clips and all(c["key"].startswith(f"video-clips/{new}/") for c in clips)
    finally:
        await conn.close()

    # the original's history stays readable, and names its retry; it is retried once only
    again = await client.job(old)
    assert again["status"] == "failed" and again["retried_by"] == new and again["error_code"] == "MODULE_FAILURE"
    assert (await client.job(new))["retry_of"] == old
    history = await follow_to_end(client, old)
    assert history[-1].event == "error"
    with pytest.raises(ApiError) as info:
        await client.retry(old)
    assert info.value.status == 400 and info.value.body["retried_by"] == new


async def test_retry_refusals_and_the_command_line(e2e_stack: RunningStack, as_user: ClientFactory, song: Path) -> None:
    owner_id = unique("rex")
    owner = await as_user(owner_id)
    job_id = str((await owner.upload(song, PROMPT))["job_id"])
    retried = None
    try:
        with pytest.raises(ApiError) as info:  # queued or processing: not failed
            await owner.retry(job_id)
        assert info.value.status == 400 and info.value.code == "VALIDATION_ERROR"
        other = await as_user(unique("mallory"))
        with pytest.raises(ApiError) as info:
            await other.retry(job_id)
        assert info.value.status == 403
        with pytest.raises(ApiError) as info:
            await owner.retry(str(uuid.uuid4()))
        assert info.value.status == 404
        # a refused retry gives its job-creation slot back; a retry takes one (below)
        assert await _slots(e2e_stack, owner_id) == 1
        # cancelled: retried, here with `montage retry`
        await owner.cancel(job_id)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "REDIS_", "DATABASE_"))}
        env |= {"MONTAGE_URL": e2e_stack.url, "MONTAGE_TOKEN": owner.token}
        cli = subprocess.run(
            [sys.executable, "-m", "montage_cli.main", "retry", job_id, "--json"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        retried = json.loads(cli.stdout)
        assert retried["retry_of"] == job_id and retried["job_id"] != job_id
        assert (await owner.job(job_id))["retried_by"] == retried["job_id"]
        assert await _slots(e2e_stack, owner_id) == 2
    finally:
        for job in (job_id, retried and retried["job_id"]):
            if job:
                with contextlib.suppress(ApiError):
                    await owner.cancel(job)
