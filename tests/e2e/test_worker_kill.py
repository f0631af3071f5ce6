"""(5) The video_generator worker is SIGKILLed holding the job's task; another takes it over and the job completes.

To kill it *during* the stage however fast clips render at test resolution, the worker is first
frozen (SIGSTOP) while idle in its blocking read (``STREAM_BLOCK_MS`` in the suite outlasts the
stages before video_generator; if the task already arrived, the worker is frozen mid-render,
which is as good): Redis delivers the job's video task to it,
the task shows as pending on that consumer, and only then is the process SIGKILLed and a fresh
worker started, which must reclaim the orphaned task (``CLAIM_IDLE_MS``) and finish the job.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from montage_cli.sse import SseEvent
from montage_common.redis import create_redis
from montage_contracts.keys import Keys
from montage_contracts.messages import StageTask

from tests.e2e.flows import PROMPT, follow_to_end, stage_updates
from tests.e2e.media import decodes, probe
from tests.stack import ClientFactory, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
STAGE = "video_generator"


async def pending_consumer(redis: Any, keys: Keys, job_id: str) -> str | None:
    """Behind the gateway: the consumer holding the job's video task un-acked, if any."""
    stream = keys.stage_stream(STAGE)
    for p in await redis.xpending_range(stream, keys.stage_group(STAGE), min="-", max="+", count=100):
        entries = await redis.xrange(stream, min=p["message_id"], max=p["message_id"])
        if entries and msgspec.json.decode(entries[0][1][b"m"], type=StageTask).job_id == job_id:
            name = p["consumer"]
            return name.decode() if isinstance(name, bytes) else str(name)
    return None


async def test_job_survives_a_killed_video_worker(
    as_user: ClientFactory, e2e_stack: RunningStack, song: Path, tmp_path: Path
) -> None:
    stack = e2e_stack.stack
    client = await as_user(unique("frank"))
    redis = create_redis(e2e_stack.redis_url)
    keys = Keys(e2e_stack.namespace)
    seen: dict[str, Any] = {}

    async def on_event(ev: SseEvent) -> None:
        data = ev.json()
        if ev.event != "stage_update":
            return
        if data.get("stage") == "prompt_generator" and data.get("status") == "started" and "frozen" not in seen:
            os.killpg(stack.procs[STAGE].pid, signal.SIGSTOP)
            seen["frozen"] = stack.procs[STAGE]
        elif data.get("stage") == STAGE and data.get("status") == "started" and "holder" not in seen:
            for _ in range(100):  # the task reaches the frozen consumer's pending list
                if holder := await pending_consumer(redis, keys, job_id):
                    seen["holder"] = holder
                    break
                await asyncio.sleep(0.1)
            proc = seen["frozen"]
            stack.kill(STAGE, signal.SIGKILL)
            seen["returncode"] = await asyncio.to_thread(proc.wait, 10)
            await asyncio.to_thread(stack.restart, STAGE)

    try:
        job_id = str((await client.upload(song, PROMPT))["job_id"])
        events = await follow_to_end(client, job_id, on_event=on_event, limit=180)
        after = await pending_consumer(redis, keys, job_id)
    finally:
        await redis.aclose()
    assert seen.get("holder"), f"the video task never reached the worker: {stage_updates(events)}"
    assert seen["returncode"] == -signal.SIGKILL
    assert events[-1].event == "completed", events[-1]
    assert [s for s, st in stage_updates(events) if st == "completed"].count(STAGE) == 1
    assert after is None  # the reclaimed task was acknowledged by its new owner
    assert (await client.job(job_id))["status"] == "completed"
    video = await client.download(job_id, tmp_path)
    assert decodes(video) == ""
    assert probe(video).duration > 10
