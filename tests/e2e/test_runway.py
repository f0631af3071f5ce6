"""Clips from the image-to-video provider, end to end: the ``PROVIDERS=fake`` stack with
``VIDEO_PROVIDER=runway`` (the real ``runwayml`` SDK in each video_generator process talking HTTP
to the Runway stand-in), two video_generator processes, ``PROVIDER_MAX_CONCURRENCY=runway=2``,
real Redis and Postgres.

- a job's every clip is a Runway task whose MP4 the worker downloaded from the stand-in; the job
  completes, one ``job_costs`` row per task (its request id), equal to the stand-in's credits;
- two jobs at once (about ten clips, wanted by both processes) while Runway answers 429 with
  ``Retry-After`` and refuses one clip (``SAFETY.OUTPUT.*``): the shared backoff key is set, no call
  reaches Runway inside the window, never more than 2 tasks open at once, both jobs complete (the
  refused clip's job with the others, the ≥ 3 clips rule);
- content moderation (every task ``FAILED`` ``SAFETY.INPUT.TEXT``): the job fails
  ``VALIDATION_ERROR``, ``retryable: false``, with the refusal in its error;
- a stage retried after Runway billed tasks (one task of the first attempt fails ``INTERNAL.*``:
  too few clips, retried): one row per billed task of both attempts, their sum the stand-in's.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from montage_contracts.keys import Keys
from redis.asyncio import Redis

from tests.e2e.flows import PROMPT
from tests.stack import (
    ARTIFACTS,
    E2E_ENV,
    dev_token,
    fetch,
    fresh_database,
    service_env,
    stack_on_free_ports,
    stand_in,
    started,
    synth_song,
    when_final,
)

pytestmark = pytest.mark.e2e

LOGS = ARTIFACTS / "runway-logs"
SONG_SECONDS = 10.0
LONGER_SECONDS = 32.0
LIMIT = 2
FINAL_WITHIN = 180.0  # liveness guard only
USD_PER_CREDIT = Decimal("0.01")


@dataclass
class RunwayStack:
    url: str
    database_url: str
    redis_url: str
    namespace: str
    runway: str  # the stand-in's root URL


@pytest.fixture(scope="module")
def runway_stack(
    redis_url: str, server_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunwayStack]:
    var_dir = tmp_path_factory.mktemp("runway-stack")
    namespace = f"rw{os.getpid()}{int(time.time()) % 100000}"
    with fresh_database(server_database_url, "montage_runway") as database_url:
        env = service_env(redis_url, database_url, namespace, var_dir, fake_providers=True)
        extra_env = {
            **E2E_ENV,
            "VIDEO_PROVIDER": "runway",
            "PROVIDER_MAX_CONCURRENCY": f"runway={LIMIT}",
            "RUNWAY_POLL_SECONDS": "0.1",
            "RETRY_COUNT": "2",
            "RETRY_BASE_SECONDS": "0.25",
            "STREAM_BLOCK_MS": "500",
            # one task at a time per process: two jobs' clips are asked for by both processes
            "WORKER_CONCURRENCY": "1",
        }
        stack = stack_on_free_ports(var_dir, env, extra_env, log_dir=LOGS)
        with started(stack, redis_url, namespace, second="video_generator") as url:
            yield RunwayStack(url, database_url, redis_url, namespace, f"http://127.0.0.1:{stack.runway_port}")


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_song(tmp_path_factory.mktemp("songs") / "runway-song.mp3", SONG_SECONDS)


@pytest.fixture(scope="module")
def longer_song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five clips or so: two jobs of it want about ten clips at once."""
    return synth_song(tmp_path_factory.mktemp("songs") / "runway-longer.mp3", LONGER_SECONDS)


class Run:
    def __init__(self, stack: RunwayStack, session: aiohttp.ClientSession) -> None:
        self.stack, self.s = stack, session

    async def fake(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await stand_in(self.s, self.stack.runway, path, body)

    async def submit(self, song: Path, user: str) -> tuple[str, dict[str, str]]:
        auth = {"Authorization": f"Bearer {await dev_token(self.s, self.stack.url, user)}"}
        form = aiohttp.FormData()
        form.add_field("user_prompt", PROMPT)
        form.add_field("audio_file", song.read_bytes(), filename="song.mp3", content_type="audio/mpeg")
        async with self.s.post(f"{self.stack.url}/api/v1/upload-audio", data=form, headers=auth) as r:
            body = await r.json()
            assert r.status == 201, body
            return str(body["job_id"]), auth

    async def final(self, job_id: str, auth: dict[str, str]) -> dict[str, Any]:
        return await when_final(self.s, self.stack.url, job_id, auth, within=FINAL_WITHIN, every=0.25)

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await fetch(self.stack.database_url, sql, *args)

    async def runway_rows(self, job_id: str) -> dict[str, Decimal]:
        rows = await self.rows(
            "SELECT call_id, request_id, cost FROM job_costs WHERE job_id = $1 AND api_name LIKE 'runway:%'", job_id
        )
        assert all(r["call_id"].endswith("@" + r["request_id"]) for r in rows)
        return {r["request_id"]: r["cost"] for r in rows}

    async def clips(self, job_id: str) -> list[dict[str, Any]]:
        return list((await self._clips_output(job_id))["clips"])

    async def failed_clips(self, job_id: str) -> list[dict[str, Any]]:
        return list((await self._clips_output(job_id)).get("failed") or [])

    async def _clips_output(self, job_id: str) -> dict[str, Any]:
        [[out]] = await self.rows(
            "SELECT output FROM job_stages WHERE job_id = $1 AND stage_name = 'video_generator'", job_id
        )
        return dict(msgspec.json.decode(out if isinstance(out, str) else str(out)))


@pytest.fixture
async def run(runway_stack: RunwayStack) -> AsyncIterator[Run]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        r = Run(runway_stack, s)
        await r.fake("/_reset", {})
        await r.fake("/_control", {"mode": "ok", "step_seconds": 0.2})
        yield r


async def test_every_clip_is_a_runway_task(run: Run, song: Path) -> None:
    job, auth = await run.submit(song, f"rw-{time.time_ns()}")
    final = await run.final(job, auth)
    assert final["status"] == "completed", final
    stats = await run.fake("/_stats")
    clips = await run.clips(job)
    tasks = {t["id"]: t for t in stats["tasks"]}
    assert len(clips) >= 3 and {c["provider"] for c in clips} == {"runway"}
    # every clip is a task of the stand-in whose MP4 the worker downloaded (its real bytes)
    assert {c["provider_job_id"] for c in clips} == set(tasks) and stats["downloads"] == len(tasks)
    assert all(t["model"] == "gen4_turbo" and t["image_bytes"] > 0 and t["promptText"] for t in tasks.values())
    assert stats["rejected"] == {}  # the key and X-Runway-Version on every call
    rows = await run.runway_rows(job)
    assert rows == {i: (t["credits"] * USD_PER_CREDIT).quantize(Decimal("0.000001")) for i, t in tasks.items()}
    async with run.s.get(f"{run.stack.url}/api/v1/jobs/{job}/download", headers=auth) as r:
        link = (await r.json())["download_url"]
    async with run.s.get(link) as r:
        video = await r.read()
    assert video[4:8] == b"ftyp"


async def test_429_and_the_cap_across_two_workers(run: Run, longer_song: Path) -> None:
    redis = Redis.from_url(run.stack.redis_url)
    keys = Keys(run.stack.namespace)
    # a call already on its way when the 429 was answered may arrive a little later on a loaded
    # machine: calls within 0.75 s of the 429 are not counted, the rest of its 2 s must be silent
    await run.fake("/_control", {"mode": "429", "times": 2, "retry_after": 2, "grace_seconds": 0.75})
    # and one clip refused by content moderation: its job goes on with the others (the >= 3 clips rule)
    await run.fake("/_control", {"fail_tasks": 1, "failure_code": "SAFETY.OUTPUT.IMAGE"})
    try:
        submitted = [await run.submit(longer_song, f"rw-{n}-{time.time_ns()}") for n in range(2)]
        seen_backoff = 0
        while not seen_backoff and not (await run.fake("/_stats"))["throttled"]:
            await asyncio.sleep(0.02)
        for _ in range(100):  # the worker that got the 429 sets the shared key at once
            if (seen_backoff := await redis.pttl(keys.provider_backoff("runway"))) > 0:
                break
            await asyncio.sleep(0.01)
        finals = [await run.final(job, auth) for job, auth in submitted]
    finally:
        await redis.aclose()
    assert [f["status"] for f in finals] == ["completed", "completed"], finals
    stats = await run.fake("/_stats")
    assert len(stats["throttled"]) == 2 and seen_backoff > 0
    assert stats["backoff_violations"] == [], stats  # no worker called Runway inside a Retry-After
    clips = [len(await run.clips(job)) for job, _ in submitted]
    assert stats["max_open"] <= LIMIT and stats["creates"] == sum(clips) + 1 >= 9
    failed = [await run.failed_clips(job) for job, _ in submitted]
    [refused] = [f for job_failed in failed for f in job_failed]
    assert sorted(len(f) for f in failed) == [0, 1] and "SAFETY.OUTPUT.IMAGE" in refused["error"]
    print(
        f"runway: {clips} clips, {stats['creates']} tasks, at most {stats['max_open']} open, 429s {len(stats['throttled'])}"
    )
    # both video_generator processes asked Runway for clips
    logs = [(LOGS / f"{name}.log").read_text() for name in ("video_generator", "video_generator-2")]
    assert all("runway_task_created" in text for text in logs)


async def test_content_moderation_fails_the_job_for_good(run: Run, song: Path) -> None:
    await run.fake("/_control", {"fail_tasks": 1000, "failure_code": "SAFETY.INPUT.TEXT"})
    job, auth = await run.submit(song, f"rw-{time.time_ns()}")
    final = await run.final(job, auth)
    await run.fake("/_control", {"fail_tasks": 0})
    assert final["status"] == "failed" and final["error_code"] == "VALIDATION_ERROR", final
    assert final["retryable"] is False
    assert "content moderation" in final["error_message"] and "SAFETY.INPUT.TEXT" in final["error_message"]
    stats = await run.fake("/_stats")
    assert stats["creates"] == len(await run.runway_rows(job))  # refused once: no retry made more tasks


async def test_a_retried_stage_is_billed_per_task(run: Run, song: Path) -> None:
    # the first task fails INTERNAL: too few clips, the stage is retried and asks for every clip again
    await run.fake("/_control", {"fail_tasks": 1, "failure_code": "INTERNAL.BAD_OUTPUT.CODE01"})
    job, auth = await run.submit(song, f"rw-{time.time_ns()}")
    final = await run.final(job, auth)
    assert final["status"] == "completed", final
    stats = await run.fake("/_stats")
    clips = await run.clips(job)
    assert stats["creates"] == 2 * len(clips)  # every clip asked for in both attempts
    rows = await run.runway_rows(job)
    assert set(rows) == {t["id"] for t in stats["tasks"]}  # one row per task Runway made
    billed = sum((t["credits"] * USD_PER_CREDIT for t in stats["tasks"]), Decimal(0))
    assert sum(rows.values(), Decimal(0)) == billed and billed > 0
    print(f"retried stage: {len(rows)} runway rows for {len(clips)} clips, ${billed}")
