"""The event log of a job, read from the start, for each path of the spec."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
from montage_contracts.messages import ErrorInfo, StageTask
from montage_contracts.models import ComposerInput, PromptGeneratorInput
from montage_contracts.pipeline import STAGE_PROGRESS, STAGES, timeout_message

from tests.orchestrator.conftest import Orchestrator, Reply, headers, wait_for

Events = list[tuple[str, dict[str, Any]]]


def shape(events: Events) -> list[tuple[Any, ...]]:
    """Events reduced to what the sequence is about."""
    out: list[tuple[Any, ...]] = []
    for name, data in events:
        if name == "stage_update":
            out.append((name, data["stage"], data["status"]))
        elif name == "progress":
            out.append((name, data["progress"]))
        elif name == "message" or name == "cost_update":
            out.append((name, data["stage"]))
        elif name == "error":
            out.append((name, data["code"]))
        else:
            out.append((name,))
    return out


def stage_block(stage: str, *, messages: int = 1, costs: int = 1) -> list[tuple[Any, ...]]:
    return [
        ("stage_update", stage, "started"),
        ("message", stage),  # every stage starts with a message (StageSpec.started_message)
        *[("message", stage)] * messages,
        *[("cost_update", stage)] * costs,
        ("stage_update", stage, "completed"),
        ("progress", STAGE_PROGRESS[stage]),
    ]


async def test_successful_run(orch: Orchestrator, pool: asyncpg.Pool) -> None:
    job_id = await orch.create_job()
    body = await orch.wait_final(job_id)
    assert body["status"] == "completed", body
    events = await orch.events(job_id)
    expected = [step for s in STAGES for step in stage_block(s)] + [("completed",)]
    assert shape(events) == expected
    assert events[-1][1]["total_cost"] == 0.6
    assert events[-1][1]["video_url"].startswith("http://127.0.0.1:1/files/video-outputs/")
    costs = [d for e, d in events if e == "cost_update"]
    assert [c["total"] for c in costs] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert all(
        isinstance(d["duration"], float) for e, d in events if e == "stage_update" and d["status"] == "completed"
    )
    assert events[-2] == ("progress", {"progress": 100, "estimated_remaining": 0})
    # the composer got the plan's transitions and the analysis' beats
    composer = next(t for t in orch.fakes.tasks if t.stage == "composer")
    assert isinstance(composer.input, ComposerInput)
    assert [t.kind for t in composer.input.transitions] == ["fade"] * 4
    assert composer.input.beats[:2] == [0.5, 1.0]
    assert len(composer.input.clips.clips) == 5
    row = await pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1::uuid", job_id)
    assert row["total_cost"] == Decimal("0.6") and row["progress"] == 100 and row["video_key"]
    assert await pool.fetchval("SELECT count(*) FROM job_costs WHERE job_id = $1::uuid", job_id) == 6
    stages = await pool.fetch("SELECT stage_name, status FROM job_stages WHERE job_id = $1::uuid", job_id)
    assert {r["stage_name"]: r["status"] for r in stages} == dict.fromkeys(STAGES, "completed")
    # intermediates deleted at once, the final video kept
    storage = orch.deps.storage
    assert await wait_for(lambda: _gone(storage, [f"reference-images/{job_id}/", f"video-clips/{job_id}/"]))
    assert await storage.exists(f"video-outputs/{job_id}/final_video.mp4")


async def _gone(storage: Any, prefixes: list[str]) -> bool:
    for p in prefixes:
        if await storage.list(p):
            return False
    return True


async def test_reference_generator_fallback(orch: Orchestrator, pool: asyncpg.Pool) -> None:
    orch.fakes.behaviour["reference_generator"] = lambda t: Reply(
        error=ErrorInfo(code="GENERATION_ERROR", message="image model down"), costs=[]
    )
    job_id = await orch.create_job()
    assert (await orch.wait_final(job_id))["status"] == "completed"
    expected = [
        *stage_block("audio_parser"),
        *stage_block("scene_planner"),
        ("stage_update", "reference_generator", "started"),
        ("message", "reference_generator"),  # the stage's start message
        ("message", "reference_generator"),
        ("stage_update", "reference_generator", "completed"),
        ("progress", 30),
        *stage_block("prompt_generator"),
        *stage_block("video_generator"),
        *stage_block("composer"),
        ("completed",),
    ]
    assert shape(await orch.events(job_id)) == expected
    meta = await pool.fetchval(
        "SELECT metadata FROM job_stages WHERE job_id = $1::uuid AND stage_name = 'reference_generator'", job_id
    )
    assert '"fallback_mode": true' in meta and "image model down" in meta
    prompt = next(t for t in orch.fakes.tasks if t.stage == "prompt_generator")
    assert isinstance(prompt.input, PromptGeneratorInput)
    assert prompt.input.references is None and prompt.input.fallback_mode is True


async def test_two_of_five_clips_fail(orch: Orchestrator) -> None:
    orch.fakes.behaviour["video_generator"] = lambda t: Reply(
        failed_clips=2, progress=["clip 3 failed", "clip 4 failed"]
    )
    job_id = await orch.create_job()
    assert (await orch.wait_final(job_id))["status"] == "completed"
    expected = [
        *[step for s in STAGES[:4] for step in stage_block(s)],
        *stage_block("video_generator", messages=2),
        *stage_block("composer"),
        ("completed",),
    ]
    assert shape(await orch.events(job_id)) == expected
    composer = next(t for t in orch.fakes.tasks if t.stage == "composer")
    assert isinstance(composer.input, ComposerInput) and len(composer.input.clips.clips) == 3


async def test_fewer_than_three_clips_fails(orch: Orchestrator) -> None:
    orch.fakes.behaviour["video_generator"] = lambda t: Reply(failed_clips=3, progress=[])
    job_id = await orch.create_job()
    body = await orch.wait_final(job_id)
    assert body["status"] == "failed" and "Insufficient clips" in body["error_message"]
    events = await orch.events(job_id)
    assert shape(events)[-4:] == [
        ("stage_update", "video_generator", "started"),
        ("message", "video_generator"),  # the stage's start message
        ("cost_update", "video_generator"),
        ("error", "MODULE_FAILURE"),
    ]
    assert events[-1][1]["retryable"] is False


async def test_budget_stop_on_reported_cost(orch_factory_budget: Orchestrator, pool: asyncpg.Pool) -> None:
    orch = orch_factory_budget
    orch.fakes.behaviour["video_generator"] = lambda t: Reply(costs=["2.00", "2.00"], progress=[])
    job_id = await orch.create_job()
    body = await orch.wait_final(job_id)
    assert body["status"] == "failed"
    assert body["error_message"] == "Budget limit exceeded"
    expected = [
        *[step for s in STAGES[:4] for step in stage_block(s)],
        ("stage_update", "video_generator", "started"),
        ("message", "video_generator"),  # the stage's start message
        ("cost_update", "video_generator"),
        ("error", "BUDGET_EXCEEDED"),
    ]
    events = await orch.events(job_id)
    assert shape(events) == expected
    assert events[-1][1] == {"error": "Budget limit exceeded", "code": "BUDGET_EXCEEDED", "retryable": False}
    total = await pool.fetchval("SELECT total_cost FROM jobs WHERE job_id = $1::uuid", job_id)
    assert total == Decimal("2.4") and total <= Decimal("3")
    assert await pool.fetchval("SELECT sum(cost) FROM job_costs WHERE job_id = $1::uuid", job_id) == total
    assert await orch.deps.redis.exists(orch.deps.keys.job_cancel(job_id))


async def test_budget_checked_before_video_generator(orch_factory_budget: Orchestrator) -> None:
    orch = orch_factory_budget
    orch.fakes.behaviour["prompt_generator"] = lambda t: Reply(costs=["1.50"], progress=[])
    job_id = await orch.create_job()
    body = await orch.wait_final(job_id)
    assert body["status"] == "failed"
    expected = [
        *[step for s in STAGES[:3] for step in stage_block(s)],
        *stage_block("prompt_generator", messages=0),
        ("error", "BUDGET_EXCEEDED"),
    ]
    assert shape(await orch.events(job_id)) == expected
    assert not [t for t in orch.fakes.tasks if t.stage == "video_generator"]


async def test_cancel_mid_pipeline(orch: Orchestrator, pool: asyncpg.Pool) -> None:
    hold = asyncio.Event()
    orch.fakes.behaviour["video_generator"] = lambda t: Reply(hold=hold, progress=[])
    job_id = await orch.create_job()
    await wait_for(lambda: _has_task(orch.fakes.tasks, "video_generator"))
    resp = await orch.session.post(f"{orch.url}/api/v1/jobs/{job_id}/cancel", headers=headers())
    assert resp.status == 200
    assert await resp.json() == {"job_id": job_id, "status": "failed", "message": "Job cancelled by user"}
    assert (await orch.job(job_id))["status"] == "failed"  # at once, not cached stale
    assert await orch.deps.redis.get(orch.deps.keys.job_cancel(job_id)) == b"1"
    hold.set()  # the worker now sees the flag and answers CANCELLED, which is ignored
    await wait_for(lambda: _results_acked(orch))
    expected = [
        *[step for s in STAGES[:4] for step in stage_block(s)],
        ("stage_update", "video_generator", "started"),
        ("message", "video_generator"),  # the stage's start message
        ("error", "CANCELLED"),
    ]
    events = await orch.events(job_id)
    assert shape(events) == expected
    assert events[-1][1]["error"] == "Job cancelled by user"
    row = await pool.fetchrow(
        "SELECT status, error_message, files_expire_at, completed_at FROM jobs WHERE job_id = $1::uuid", job_id
    )
    assert row["status"] == "failed" and row["error_message"] == "Job cancelled by user"
    assert 6.9 < (row["files_expire_at"] - row["completed_at"]).total_seconds() / 86400 < 7.1
    storage = orch.deps.storage
    assert not await storage.list(f"reference-images/{job_id}/")
    assert await storage.list(f"audio-uploads/user-1/{job_id}/")


async def _has_task(tasks: list[StageTask], stage: str) -> bool:
    return any(t.stage == stage for t in tasks)


async def _results_acked(orch: Orchestrator) -> bool:
    r: Any = orch.deps.redis
    groups = await r.xinfo_groups(orch.deps.keys.results_stream())
    return all(int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0 for g in groups)


async def test_timeout_even_when_workers_are_dead(orchestrator_factory: Any, pool: asyncpg.Pool) -> None:
    orch = await orchestrator_factory(workers=False, job_timeout_seconds=0.5)
    job_id = await orch.create_job()
    body = await orch.wait_final(job_id)
    assert body["status"] == "failed" and body["error_message"] == "Job exceeded 0.5-second timeout"
    events = await orch.events(job_id)
    assert shape(events) == [
        ("stage_update", "audio_parser", "started"),
        ("message", "audio_parser"),
        ("error", "TIMEOUT"),
    ]
    assert events[-1][1]["retryable"] is True  # the same song may well finish next time
    assert await orch.deps.redis.exists(orch.deps.keys.job_cancel(job_id))


async def test_audio_parser_failure_fails_job(orch: Orchestrator) -> None:
    orch.fakes.behaviour["audio_parser"] = lambda t: Reply(
        error=ErrorInfo(code="MODULE_FAILURE", message="bad audio"), costs=[]
    )
    job_id = await orch.create_job()
    body = await orch.wait_final(job_id)
    assert body["status"] == "failed" and "bad audio" in body["error_message"]
    assert shape(await orch.events(job_id)) == [
        ("stage_update", "audio_parser", "started"),
        ("message", "audio_parser"),  # the stage's start message
        ("error", "MODULE_FAILURE"),
    ]


async def test_scene_planner_fallback_plan(orch: Orchestrator) -> None:
    orch.fakes.behaviour["scene_planner"] = lambda t: Reply(
        error=ErrorInfo(code="GENERATION_ERROR", message="llm down"), costs=[]
    )
    job_id = await orch.create_job()
    assert (await orch.wait_final(job_id))["status"] == "completed"
    ref = next(t for t in orch.fakes.tasks if t.stage == "reference_generator")
    plan = ref.input.plan  # type: ignore[union-attr]
    assert plan.fallback and len(plan.clip_scripts) == 5
    assert all(t.kind == "cut" for t in plan.transitions)
    assert plan.clip_scripts[0].start == 0 and plan.clip_scripts[-1].end == 30.0
    beats = {0.5 * i for i in range(1, 60)}
    assert all(c.start in beats for c in plan.clip_scripts[1:])


def test_timeout_message_follows_the_setting() -> None:
    assert timeout_message(900.0) == "Job exceeded 15-minute timeout"
    assert timeout_message(1800.0) == "Job exceeded 30-minute timeout"
    assert timeout_message(90.0) == "Job exceeded 90-second timeout"
