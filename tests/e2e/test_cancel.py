"""(3) Cancel mid-pipeline: the job fails "Job cancelled by user", workers stop, intermediates go.

The clip worker is held still (SIGSTOP) from scene planning until the cancel has been answered,
so the cancel always lands while ``video_generator`` has the job, however fast clips render.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from montage_cli.errors import ApiError
from montage_cli.sse import SseEvent
from montage_common.redis import create_redis
from montage_contracts.keys import Keys
from montage_contracts.messages import StageTask
from montage_contracts.pipeline import STAGES
from redis.asyncio import Redis

from tests.e2e.flows import PROMPT, follow_to_end, stage_updates
from tests.e2e.queues import queued_work
from tests.stack import ClientFactory, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

INTERMEDIATE_BUCKETS = ("reference-images", "video-clips")


def intermediates(storage: Path, job_id: str) -> list[Path]:
    """Behind the gateway: the job's files in the intermediate buckets of local storage."""
    return [p for b in INTERMEDIATE_BUCKETS for p in (storage / b).rglob("*") if p.is_file() and job_id in str(p)]


async def pending_tasks_of(redis: Redis, keys: Keys, job_id: str) -> list[str]:
    """Behind the gateway: stage tasks of the job still queued or in a worker's hands."""
    found: list[str] = []
    r: Any = redis
    for stage in STAGES:
        stream = keys.stage_stream(stage)
        for entry_id, fields in await r.xrange(stream):
            task = msgspec.json.decode(fields[b"m"], type=StageTask) if b"m" in fields else None
            if task is None or task.job_id != job_id:
                continue
            pending = await r.xpending_range(stream, keys.stage_group(stage), min=entry_id, max=entry_id, count=1)
            info = await r.xinfo_groups(stream)
            last = next((g["last-delivered-id"] for g in info if g["name"] in (stage, stage.encode())), b"0-0")
            undelivered = _id(entry_id) > _id(last)
            if pending or undelivered:
                found.append(f"{stage}:{entry_id!r}")
    return found


def _id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def test_cancel_mid_pipeline(as_user: ClientFactory, e2e_stack: RunningStack, song: Path) -> None:
    client = await as_user(unique("carol"))
    job_id = str((await client.upload(song, PROMPT))["job_id"])
    cancelled: dict[str, object] = {}
    redis = create_redis(e2e_stack.redis_url)
    keys = Keys(e2e_stack.namespace)

    video_worker = e2e_stack.stack.procs["video_generator"]

    async def on_event(ev: SseEvent) -> None:
        data = ev.json()
        if ev.event != "stage_update":
            return
        if data.get("stage") == "scene_planner" and data.get("status") == "started":
            # Hold the clip worker still so the cancel lands mid-stage however fast clips render.
            os.killpg(video_worker.pid, signal.SIGSTOP)
            cancelled["frozen"] = True
        elif data.get("stage") == "video_generator" and data.get("status") == "started" and "body" not in cancelled:
            # reference images exist and the clips task is out: cancel, then let the worker go on
            cancelled["files_before"] = len(intermediates(e2e_stack.storage_dir, job_id))
            try:
                cancelled["queued_before"] = await queued_work(redis, keys, job_id)
                cancelled["body"] = await client.cancel(job_id)
                # answered: no task of the job is left anywhere, though its worker still holds it
                cancelled["queued_after"] = await queued_work(redis, keys, job_id)
            finally:
                os.killpg(video_worker.pid, signal.SIGCONT)

    try:
        events = await follow_to_end(client, job_id, on_event=on_event)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(video_worker.pid, signal.SIGCONT)
        await redis.aclose()
    assert "body" in cancelled, f"the job ended before video_generator started: {stage_updates(events)}"
    assert cancelled["body"] == {"job_id": job_id, "status": "failed", "message": "Job cancelled by user"}
    assert cancelled["queued_before"], "the video task was not waiting: the purge had nothing to remove"
    assert cancelled["queued_after"] == [], cancelled["queued_after"]
    assert cancelled["files_before"], "no reference images existed before the cancel (nothing to clean up)"

    final = events[-1]
    assert final.event == "error", [e.event for e in events[-3:]]
    assert final.json()["error"] == "Job cancelled by user" and final.json()["retryable"] is False
    started = [s for s, st in stage_updates(events) if st == "started"]
    assert "composer" not in started, "a stage started after the cancel"

    job = await client.job(job_id)
    assert job["status"] == "failed" and job["error_message"] == "Job cancelled by user"

    redis = create_redis(e2e_stack.redis_url)
    keys = Keys(e2e_stack.namespace)
    try:  # workers stop and intermediates go (condition polled for up to 30 s)
        left: list[str] = []
        for _ in range(120):
            left = await pending_tasks_of(redis, keys, job_id)
            if not left and not intermediates(e2e_stack.storage_dir, job_id):
                break
            await asyncio.sleep(0.25)
        else:
            pytest.fail(f"after 30 s: tasks {left}, files {intermediates(e2e_stack.storage_dir, job_id)}")
    finally:
        await redis.aclose()

    # nothing brings it back to life
    job = await client.job(job_id)
    assert job["status"] == "failed" and job["error_message"] == "Job cancelled by user"
    with pytest.raises(ApiError) as again:
        await client.cancel(job_id)
    assert again.value.status == 400
