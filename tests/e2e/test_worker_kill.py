"""(5) The video_generator worker is SIGKILLed mid-stage; another picks the task up and the job completes."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from montage_cli.sse import SseEvent

from tests.e2e.conftest import ClientFactory, RunningStack, unique
from tests.e2e.flows import PROMPT, follow_to_end, stage_updates
from tests.e2e.media import decodes, probe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def test_job_survives_a_killed_video_worker(
    as_user: ClientFactory, e2e_stack: RunningStack, song: Path, tmp_path: Path
) -> None:
    stack = e2e_stack.stack
    client = await as_user(unique("frank"))
    job_id = str((await client.upload(song, PROMPT))["job_id"])
    killed: dict[str, int | None] = {}

    async def on_event(ev: SseEvent) -> None:
        data = ev.json()
        if killed or ev.event != "stage_update" or data.get("stage") != "video_generator":
            return
        if data.get("status") == "started":
            proc = stack.procs["video_generator"]
            stack.kill("video_generator", signal.SIGKILL)
            killed["returncode"] = await asyncio.to_thread(proc.wait, 10)
            await asyncio.to_thread(stack.restart, "video_generator")

    events = await follow_to_end(client, job_id, on_event=on_event, limit=180)
    assert killed, f"video_generator never started: {stage_updates(events)}"
    assert killed["returncode"] == -signal.SIGKILL
    assert events[-1].event == "completed", events[-1]
    assert (await client.job(job_id))["status"] == "completed"
    video = await client.download(job_id, tmp_path)
    assert decodes(video) == ""
    assert probe(video).duration > 10
