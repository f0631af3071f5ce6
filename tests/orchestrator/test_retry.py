"""Retry of a failed or cancelled job (``montage_orchestrator.retry``): its decisions as pure
functions, then the route on a real orchestrator, Postgres, Redis and local storage, with the
stage workers answered by the harness's stand-ins (``conftest.FakeStages``).

The multi-process test with the real workers (a failure at ``composer``) is
``tests/e2e/test_retry.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from montage_common import db
from montage_common.storage import LocalStorage, layout
from montage_contracts.messages import ErrorInfo, StageTask
from montage_contracts.pipeline import PIPELINE, STAGES
from montage_orchestrator import cleanup
from montage_orchestrator.jobs import RATES
from montage_orchestrator.retry import StageRow, plan, rebase_output, refusal

from tests.orchestrator.conftest import Orchestrator, Reply, headers, wait_for

OUT = '{"x":1}'


# --- decisions ----------------------------------------------------------------------------
def test_plan_reuses_every_finished_stage_in_order() -> None:
    done = {s: StageRow("completed", OUT) for s in STAGES[:5]}
    assert plan({**done, "composer": StageRow("failed", None)}) == tuple(STAGES[:5])
    assert plan(done) == tuple(STAGES[:5])  # composer never started (e.g. a budget stop)
    assert plan({}) == ()
    assert plan({"audio_parser": StageRow("failed", None)}) == ()
    # a gap: nothing after it is reused
    gap = {**done, "scene_planner": StageRow("running", None)}
    assert plan(gap) == ("audio_parser",)


def test_plan_and_stages_continued_past() -> None:
    base = {s: StageRow("completed", OUT) for s in ("audio_parser", "scene_planner")}
    # reference_generator failed and the job went on text-only: reused (no output)
    text_only = {**base, "reference_generator": StageRow("failed", None), "prompt_generator": StageRow("failed", None)}
    assert plan(text_only) == ("audio_parser", "scene_planner", "reference_generator")
    # reference_generator failed because the job was cancelled in it: not reused
    cancelled = {**base, "reference_generator": StageRow("failed", None)}
    assert plan(cancelled) == ("audio_parser", "scene_planner")
    # a failed stage whose policy fails the job is never reused, whatever follows
    assert plan({"audio_parser": StageRow("failed", None), "scene_planner": StageRow("completed", OUT)}) == ()


def test_refusal() -> None:
    assert refusal("failed", None) is None
    for status in ("queued", "processing", "completed"):
        why = refusal(status, None)
        assert why is not None and status in why
    why = refusal("failed", "1234")
    assert why is not None and "1234" in why


def test_rebase_output_rewrites_only_the_jobs_keys() -> None:
    old, new, user = str(uuid.uuid4()), str(uuid.uuid4()), "u1"
    raw = json.dumps(
        {
            "clips": [{"key": f"video-clips/{old}/clip_0.mp4", "start": 0.5}, {"key": f"video-clips/{old}/clip_1.mp4"}],
            "refs": [f"reference-images/{old}/scene_a.png"],
            "other": f"video-clips/{uuid.uuid4()}/clip_0.mp4",
            "text": "video-clips",
            "n": 3,
        }
    )
    out, named = rebase_output(raw, lambda k: layout.rebase_key(k, old, user, new))
    data = json.loads(out)
    assert data["clips"][0] == {"key": f"video-clips/{new}/clip_0.mp4", "start": 0.5}
    assert data["refs"] == [f"reference-images/{new}/scene_a.png"]
    assert data["other"].startswith("video-clips/") and new not in data["other"]
    assert data["text"] == "video-clips" and data["n"] == 3
    assert sorted(named) == sorted(
        [f"video-clips/{old}/clip_0.mp4", f"video-clips/{old}/clip_1.mp4", f"reference-images/{old}/scene_a.png"]
    )


def test_rebase_key() -> None:
    assert layout.rebase_key("audio-uploads/u/j1/song.mp3", "j1", "u", "j2") == "audio-uploads/u/j2/song.mp3"
    assert layout.rebase_key("video-outputs/j1/final_video.mp4", "j1", "u", "j2") == "video-outputs/j2/final_video.mp4"
    assert layout.rebase_key("audio-uploads/other/j1/song.mp3", "j1", "u", "j2") is None
    assert layout.rebase_key("video-clips/j1/", "j1", "u", "j2") is None
    assert layout.rebase_key("video-clips/j10/clip_0.mp4", "j1", "u", "j2") is None


async def test_local_copy(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, "k", "http://127.0.0.1:1")
    await storage.put_bytes("video-clips/a/clip_0.mp4", b"clip")
    assert await storage.copy("video-clips/a/clip_0.mp4", "video-clips/b/clip_0.mp4") == 4
    assert storage.path_of("video-clips/b/clip_0.mp4").read_bytes() == b"clip"
    assert await storage.exists("video-clips/a/clip_0.mp4")


# --- the route ----------------------------------------------------------------------------
async def _retry(orch: Orchestrator, job_id: str, user: str = "user-1") -> Any:
    return await orch.session.post(f"{orch.url}/api/v1/jobs/{job_id}/retry", headers=headers(user))


def _tasks(orch: Orchestrator, job_id: str) -> list[str]:
    return [t.stage for t in orch.fakes.tasks if t.job_id == job_id]


async def _costs(pool: asyncpg.Pool, job_id: str) -> dict[str, Decimal]:
    rows = await pool.fetch(
        "SELECT stage_name, sum(cost) AS c FROM job_costs WHERE job_id = $1 GROUP BY stage_name", uuid.UUID(job_id)
    )
    return {r["stage_name"]: r["c"] for r in rows}


async def test_retry_after_video_generator_failed(orch: Orchestrator) -> None:
    fail_once = {"n": 0}

    def video(task: StageTask) -> Reply:
        fail_once["n"] += 1
        if fail_once["n"] == 1:
            return Reply(error=ErrorInfo(code="GENERATION_ERROR", message="provider down"), costs=["0.20"])
        return Reply()

    orch.fakes.behaviour["video_generator"] = video
    old = await orch.create_job()
    assert (await orch.wait_final(old))["status"] == "failed"
    pool = orch.deps.pool
    paid = await _costs(pool, old)
    storage = orch.deps.storage
    old_ref = f"reference-images/{old}/scene_s1.png"
    assert await storage.exists(old_ref)  # a failed job keeps its intermediates

    resp = await _retry(orch, old)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    new = body["job_id"]
    assert body["retry_of"] == old and body["resumed_from"] == "video_generator"
    assert body["reused_stages"] == ["audio_parser", "scene_planner", "reference_generator", "prompt_generator"]
    final = await orch.wait_final(new)
    assert final["status"] == "completed" and final["retry_of"] == old
    assert _tasks(orch, new) == ["video_generator", "composer"]  # no earlier stage ran again
    # the reused reference image is the new job's own copy; the original keeps its files
    assert await storage.exists(f"reference-images/{new}/scene_s1.png") is False  # deleted: the job completed
    assert await storage.exists(old_ref)
    audio = await pool.fetchval("SELECT audio_key FROM jobs WHERE job_id = $1", uuid.UUID(new))
    assert audio.startswith(f"audio-uploads/user-1/{new}/") and await storage.exists(audio)
    prompts = await pool.fetchval(
        "SELECT output::text FROM job_stages WHERE job_id = $1 AND stage_name = 'reference_generator'",
        uuid.UUID(new),
    )
    assert f"reference-images/{new}/" in prompts and old not in prompts
    # the cost of the reused stages is charged once (to the original); the retry pays what it ran
    assert await _costs(pool, old) == paid
    assert set(await _costs(pool, new)) == {"video_generator", "composer"}
    # the original names its retry, and is retried once only
    assert (await orch.job(old))["retried_by"] == new
    again = await _retry(orch, old)
    assert again.status == 400
    err = await again.json()
    assert err["code"] == "VALIDATION_ERROR" and err["retried_by"] == new and err["job_id"] == old
    # a completed job is not retried
    done = await _retry(orch, new)
    assert done.status == 400 and "completed" in (await done.json())["error"]


async def test_retry_of_a_cancelled_job_runs_the_stages_whose_files_are_gone(orch: Orchestrator) -> None:
    hold = asyncio.Event()
    orch.fakes.behaviour["prompt_generator"] = lambda t: Reply(hold=hold if not hold.is_set() else None)
    old = await orch.create_job()

    async def in_prompt_generator() -> bool | None:
        return True if "prompt_generator" in _tasks(orch, old) else None

    await wait_for(in_prompt_generator)
    cancel = await orch.session.post(f"{orch.url}/api/v1/jobs/{old}/cancel", headers=headers())
    assert cancel.status == 200
    hold.set()
    await orch.wait_final(old)
    # the cancel deleted the reference images (spec): reference_generator must run again
    assert not await orch.deps.storage.exists(f"reference-images/{old}/scene_s1.png")
    resp = await _retry(orch, old)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["reused_stages"] == ["audio_parser", "scene_planner"]
    assert body["resumed_from"] == "reference_generator"
    assert (await orch.wait_final(body["job_id"]))["status"] == "completed"
    assert _tasks(orch, body["job_id"]) == ["reference_generator", "prompt_generator", "video_generator", "composer"]


async def test_concurrent_retries_make_one_job_and_refusals(orch: Orchestrator) -> None:
    orch.fakes.behaviour["composer"] = lambda t: Reply(error=ErrorInfo(code="MODULE_FAILURE", message="boom"))
    old = await orch.create_job()
    await orch.wait_final(old)
    orch.fakes.behaviour.pop("composer")
    assert (await _retry(orch, old, user="intruder")).status == 403
    assert (await _retry(orch, str(uuid.uuid4()))).status == 404
    assert (await _retry(orch, "not-a-uuid")).status == 404
    answers = await asyncio.gather(*(_retry(orch, old) for _ in range(5)))
    statuses = sorted(r.status for r in answers)
    assert statuses == [201, 400, 400, 400, 400]
    (created,) = [await r.json() for r in answers if r.status == 201]
    assert created["resumed_from"] == "composer"
    assert (await orch.wait_final(created["job_id"]))["status"] == "completed"
    count = await orch.deps.pool.fetchval("SELECT count(*) FROM jobs WHERE retry_of = $1", uuid.UUID(old))
    assert count == 1
    # the retry's first events say what it reuses; its stream starts with the reused progress
    evs = await orch.events(created["job_id"])
    assert evs[0][0] == "message" and old in evs[0][1]["text"]
    assert evs[1] == ("progress", {"progress": 85, "estimated_remaining": evs[1][1]["estimated_remaining"]})


async def test_no_song_no_retry(orch: Orchestrator) -> None:
    orch.fakes.behaviour["audio_parser"] = lambda t: Reply(error=ErrorInfo(code="MODULE_FAILURE", message="x"))
    old = await orch.create_job()
    await orch.wait_final(old)
    key = await orch.deps.pool.fetchval("SELECT audio_key FROM jobs WHERE job_id = $1", uuid.UUID(old))
    await orch.deps.storage.delete([key])
    resp = await _retry(orch, old)
    assert resp.status == 410 and (await resp.json())["code"] == "GONE"
    # nothing was left behind by the refused retry
    assert await orch.deps.pool.fetchval("SELECT count(*) FROM jobs WHERE retry_of = $1", uuid.UUID(old)) == 0
    assert await orch.deps.pool.fetchval("SELECT retried_by FROM jobs WHERE job_id = $1", uuid.UUID(old)) is None


async def test_cleanup_of_the_original_never_touches_a_live_retry(orch: Orchestrator) -> None:
    """The original expires (scheduled cleanup deletes all its files) while its retry still runs:
    the retry works on its own copies, which stay."""
    orch.fakes.behaviour["composer"] = lambda t: Reply(error=ErrorInfo(code="MODULE_FAILURE", message="boom"))
    old = await orch.create_job()
    await orch.wait_final(old)
    hold = asyncio.Event()
    orch.fakes.behaviour["composer"] = lambda t: Reply(hold=hold)
    resp = await _retry(orch, old)
    assert resp.status == 201, await resp.text()
    new = (await resp.json())["job_id"]

    async def composing() -> bool | None:
        return True if "composer" in _tasks(orch, new) else None

    await wait_for(composing)  # the retry is live, in composer
    pool, storage = orch.deps.pool, orch.deps.storage
    await pool.execute(
        "UPDATE jobs SET files_expire_at = now() - interval '1 second' WHERE job_id = $1", uuid.UUID(old)
    )
    report = await cleanup.run(orch.deps)
    assert report.expired_jobs >= 1
    assert await storage.list(f"video-clips/{old}/") == []  # the original's files are gone
    copies = [o.key for o in await storage.list(f"video-clips/{new}/")]
    assert copies and all(await asyncio.gather(*(storage.exists(k) for k in copies)))
    audio = await pool.fetchval("SELECT audio_key FROM jobs WHERE job_id = $1", uuid.UUID(new))
    assert await storage.exists(audio)
    hold.set()
    assert (await orch.wait_final(new))["status"] == "completed"


@pytest.fixture
async def own_database(server_database_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test alone: the door's forecast reads every unfinished
    job, and the session's shared database holds the earlier tests' jobs."""
    name = f"montage_door_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = urlunsplit(urlsplit(server_database_url)._replace(path=f"/{name}"))
        pool = await db.create_pool(url)
        try:
            await db.migrate(pool, "montage_orchestrator", "montage_ragnarok")
        finally:
            await pool.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_retry_passes_the_same_door_as_an_upload(
    orchestrator_factory: Callable[..., Awaitable[Orchestrator]], own_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry adds work like an upload: while its user's one slot is taken by a job sitting in
    audio_parser, it would wait past ADMISSION_MAX_WAIT_SECONDS, so 503 + Retry-After and nothing
    is created; once the slot is free it is admitted.

    The forecast prices each stage at 10 s of work per second of song (``RATES`` pinned, not
    measured), so the busy job's remaining work is minutes, however fast this machine runs it."""
    monkeypatch.setattr(RATES, "measured", {spec.name: 10.0 for spec in PIPELINE})
    monkeypatch.setattr(RATES, "_read_at", math.inf)  # never refreshed from the table in this test
    orch = await orchestrator_factory(user_max_active_jobs=1, admission_max_wait_seconds=1.0, database_url=own_database)
    orch.fakes.behaviour["composer"] = lambda t: Reply(error=ErrorInfo(code="MODULE_FAILURE", message="boom"))
    old = await orch.create_job()
    await orch.wait_final(old)
    orch.fakes.behaviour.pop("composer")
    hold = asyncio.Event()
    orch.fakes.behaviour["audio_parser"] = lambda t: Reply(hold=hold)
    busy = await orch.create_job()

    async def parsing() -> bool | None:
        return True if "audio_parser" in _tasks(orch, busy) else None

    await wait_for(parsing)
    resp = await _retry(orch, old)
    assert resp.status == 503, await resp.text()
    assert int(resp.headers["Retry-After"]) >= 1
    assert await orch.deps.pool.fetchval("SELECT retried_by FROM jobs WHERE job_id = $1", uuid.UUID(old)) is None
    hold.set()
    await orch.wait_final(busy)
    resp = await _retry(orch, old)
    assert resp.status == 201, await resp.text()
    assert (await orch.wait_final((await resp.json())["job_id"]))["status"] == "completed"
