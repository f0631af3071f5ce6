"""Cancel removes the job's queued work at once (issue #22): once the cancel is answered, no task
of the job is left in any stream of its partition (stage streams, the clip stream, the delayed
retries), whoever held it.

The audio_parser worker is held still (SIGSTOP) so the job's first task is still waiting when the
cancel comes: in the stream unread, or delivered to the frozen worker's blocked read (pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from montage_common.redis import create_redis
from montage_contracts.keys import Keys

from tests.e2e.flows import PROMPT
from tests.e2e.queues import queued_work
from tests.stack import ClientFactory, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_cancel_of_a_queued_job_leaves_nothing_in_the_streams(
    as_user: ClientFactory, e2e_stack: RunningStack, song: Path
) -> None:
    client = await as_user(unique("quentin"))
    worker = e2e_stack.stack.procs["audio_parser"]
    redis = create_redis(e2e_stack.redis_url)
    keys = Keys(e2e_stack.namespace)
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        job_id = str((await client.upload(song, PROMPT))["job_id"])
        before: list[str] = []
        for _ in range(200):  # the first task reaches Redis (sent right after the upload's commit)
            if before := await queued_work(redis, keys, job_id):
                break
            await asyncio.sleep(0.05)
        body = await client.cancel(job_id)
        after = await queued_work(redis, keys, job_id)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGCONT)
    try:
        assert before, "the job's first task never reached a stream: nothing to remove"
        assert body["status"] == "failed" and body["message"] == "Job cancelled by user"
        assert after == [], after
        # the thawed worker finds its claim gone: nothing comes back, the job stays cancelled
        await asyncio.sleep(1.0)
        assert await queued_work(redis, keys, job_id) == []
        job = await client.job(job_id)
        assert job["status"] == "failed" and job["error_message"] == "Job cancelled by user"
        assert job["current_stage"] in (None, "audio_parser")
    finally:
        await redis.aclose()
