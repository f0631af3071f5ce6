"""Workers that wedge or die, and jobs that finish anyway (issue #22): a supervised stack.

The stack of this module runs two workers per stage and is supervised as Kubernetes supervises
pods (``Stack.supervising``: a process that exits, or fails its ``/healthz`` liveness probe three
times in a row, is started again).

- A video_generator worker is stopped (SIGSTOP) while it holds the job's task: its liveness probe
  fails, the supervisor replaces it, and the task (and its clips) complete in other processes.
- Chaos: songs of 30 s and more (so the clip fan-out runs) while stage workers of every kind
  (video_generator coordinators and clip renderers included) and the orchestrator are SIGKILLed
  one after another, one every 4 s or so (``CHAOS_INTERVAL``) and each kind as soon as the batch
  reaches its stage (so every kind is hit however fast the machine runs), each started again by the
  supervisor: every job completes, none by TIMEOUT. ``CHAOS_REPETITIONS`` (default 1),
  ``CHAOS_JOBS`` (default 6: CI keeps to 6 jobs of 30-45 s songs; the issue's 10 jobs of 30-90 s,
  5 times, is ``bench/chaos.py``), ``CHAOS_SONG_MAX`` (default 45). Each job's time is written to
  ``tests/artifacts/chaos.json``; how it compares with an undisturbed run is measured by
  ``bench/chaos.py`` (a benchmark, not a timed test).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from montage_common.redis import create_redis
from montage_contracts.messages import StageTask
from montage_contracts.pipeline import STAGES

from tests.e2e.chaos import (
    Chaos,
    Supervised,
    follow_all,
    make_song,
    run_batch,
    session,
    song_lengths,
    supervised_stack,
    upload_all,
)
from tests.stack import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

STAGE = "video_generator"


@pytest.fixture(scope="module")
def supervised(
    server_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Supervised]:
    var_dir = tmp_path_factory.mktemp("chaos-stack")
    with supervised_stack(server_database_url, redis_url, var_dir, ARTIFACTS / "chaos-logs") as target:
        yield target


@pytest.fixture(scope="module")
def songs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chaos-songs")


async def video_task_holder(target: Supervised, job_id: str) -> str | None:
    """The service (by name) whose process holds the job's video task un-acked, if any."""
    redis = create_redis(target.redis_url)
    r: Any = redis
    stream = target.keys.stage_stream(STAGE)
    try:
        for p in await r.xpending_range(stream, target.keys.stage_group(STAGE), min="-", max="+", count=100):
            rows = await r.xrange(stream, min=p["message_id"], max=p["message_id"])
            if rows and msgspec.json.decode(rows[0][1][b"m"], type=StageTask).job_id == job_id:
                name = p["consumer"]
                return target.name_of_consumer(name.decode() if isinstance(name, bytes) else str(name))
    finally:
        await redis.aclose()
    return None


async def test_a_stopped_worker_is_replaced_and_its_task_completes_elsewhere(
    supervised: Supervised, songs_dir: Path
) -> None:
    song = make_song(songs_dir, 40)
    for _ in range(600):  # the supervisor has seen every process answer (bounded: about a minute)
        if supervised.stack.probed():
            break
        await asyncio.sleep(0.1)
    assert supervised.stack.probed(), "a process never answered its liveness probe"
    async with session() as http:
        batch = await upload_all(http, supervised, [(song, 40)])
        job_id = batch.runs[0][0].job_id
        holder = None
        for _ in range(2400):  # the job's video task reaches a worker (bounded: about 2 minutes)
            if holder := await video_task_holder(supervised, job_id):
                break
            await asyncio.sleep(0.05)
        assert holder is not None, "the video task never reached a worker"
        frozen = supervised.stack.procs[holder]
        restarts_before = supervised.restarts.count(holder)
        os.killpg(frozen.pid, signal.SIGSTOP)
        held = await video_task_holder(supervised, job_id)
        runs = await follow_all(batch)

    assert held == holder, "the task was handed off before the worker stopped: nothing was tested"
    assert [r.status for r in runs] == ["completed"], runs
    assert await asyncio.to_thread(frozen.wait, 30) == -signal.SIGKILL  # stopped until the supervisor killed it
    for _ in range(300):  # the supervisor records the restart once the new process is started
        if supervised.restarts.count(holder) > restarts_before:
            break
        await asyncio.sleep(0.1)
    assert supervised.restarts.count(holder) == restarts_before + 1, supervised.restarts
    assert supervised.stack.procs[holder].pid != frozen.pid
    assert await video_task_holder(supervised, job_id) is None  # handed off by another process


def test_chaos_every_job_completes(supervised: Supervised, songs_dir: Path) -> None:
    repetitions = int(os.environ.get("CHAOS_REPETITIONS", "1"))
    jobs = int(os.environ.get("CHAOS_JOBS", "6"))
    longest = float(os.environ.get("CHAOS_SONG_MAX", "45"))
    songs = [(make_song(songs_dir, s), s) for s in song_lengths(jobs, 30.0, longest)]
    report: list[dict[str, Any]] = []
    for rep in range(repetitions):
        chaos = Chaos(supervised, interval=float(os.environ.get("CHAOS_INTERVAL", "4")), seed=rep)
        runs = asyncio.run(run_batch(supervised, songs, chaos))
        report.append(
            {
                "repetition": rep + 1,
                "jobs": [vars(r) for r in runs],
                "kills": [vars(k) for k in chaos.kills],
            }
        )
        (ARTIFACTS / "chaos.json").write_text(json.dumps(report, indent=2))
        kinds = {k.name.rsplit("-", 1)[0] for k in chaos.kills}
        assert [r.status for r in runs] == ["completed"] * len(runs), [(r.job_id, r.error_code, r.error) for r in runs]
        assert not [r for r in runs if r.error_code == "TIMEOUT"]
        roles = {k.role for k in chaos.kills}
        assert kinds == {*STAGES, "orchestrator"}, f"the batch ended before every kind was killed: {chaos.kills}"
        assert {"video coordinator", "clip renderer"} <= roles, chaos.kills
