"""The ``montage`` command line and the ``make demo`` driver, as a user runs them, against the stack."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.flows import PROMPT, FinishedJob
from tests.e2e.media import decodes
from tests.stack import RunningStack, dev_token, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
MONTAGE = [sys.executable, "-m", "montage_cli.main"]


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def cli_env(e2e_stack: RunningStack, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "REDIS_", "DATABASE_"))}
    return {
        **env,
        "MONTAGE_URL": e2e_stack.url,
        "MONTAGE_STACK_ENV": str(tmp_path / "none.env"),
        "ENVIRONMENT": "development",
    }


def test_submit_watch_status_list_download(cli_env: dict[str, str], song: Path, tmp_path: Path) -> None:
    user = unique("cli")
    env = {**cli_env, "MONTAGE_TOKEN": run([*MONTAGE, "token", "--user", user], cli_env).stdout.strip()}
    assert env["MONTAGE_TOKEN"].count(".") == 2

    sub = run([*MONTAGE, "submit", str(song), "--prompt", PROMPT, "--watch"], env)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.split()[1]
    assert "100%" in sub.stderr and "composer" in sub.stderr  # the progress view, one line per change
    assert "completed: total cost $" in sub.stdout

    status = json.loads(run([*MONTAGE, "status", job_id, "--json"], env).stdout)
    assert status["status"] == "completed" and status["job_id"] == job_id
    listing = run([*MONTAGE, "list", "--status", "completed"], env)
    assert job_id in listing.stdout and "1 of 1" in listing.stdout

    got = run([*MONTAGE, "download", job_id, "-o", str(tmp_path / "dl")], env)
    assert got.returncode == 0, got.stderr
    video = Path(got.stdout.strip())
    assert video.parent == tmp_path / "dl" and decodes(video) == ""

    events = run([*MONTAGE, "watch", job_id, "--json"], env)  # a finished job: replayed to the end
    names = [json.loads(line)["event"] for line in events.stdout.splitlines()]
    assert names[0] == "state" and names[-1] == "completed"


def test_errors_are_clear(cli_env: dict[str, str], finished_job: FinishedJob) -> None:
    other = run([*MONTAGE, "--user", unique("eve"), "status", finished_job.job_id], cli_env)
    assert other.returncode in (4, 5) and other.stderr.startswith("montage: 40")

    bad = run([*MONTAGE, "status", finished_job.job_id], {**cli_env, "MONTAGE_TOKEN": "not-a-jwt"})
    assert bad.returncode == 4 and "401 unauthorized" in bad.stderr

    down = run([*MONTAGE, "list"], {**cli_env, "MONTAGE_URL": "http://127.0.0.1:9"})
    assert down.returncode == 7 and "is the stack running? try `make up`" in down.stderr

    prod = run([*MONTAGE, "token", "--user", "x"], {**cli_env, "ENVIRONMENT": "production"})
    assert prod.returncode == 2 and "not available when ENVIRONMENT=production" in prod.stderr


def test_queues_operator_view(cli_env: dict[str, str], e2e_stack: RunningStack, finished_job: FinishedJob) -> None:
    env = {**cli_env, "REDIS_URL": e2e_stack.redis_url, "REDIS_NAMESPACE": e2e_stack.namespace}
    out = run([*MONTAGE, "queues", "--json"], env)
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    rows = {q["stream"]: q for q in snap["queues"]}
    assert set(rows) == {"audio_parser", "scene_planner", "reference_generator", "prompt_generator",
                         "video_generator", "composer", "clips", "results"}  # fmt: skip
    for stage, row in rows.items():
        if stage not in {"results", "clips"}:
            assert row["live_workers"] >= 1 and row["consumers"] >= 1, row
    table = run([*MONTAGE, "queues"], env).stdout
    assert "video_generator" in table and "dead" in table


def test_demo_driver_against_a_running_stack(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    demo = run([sys.executable, "-m", "montage_cli.demo", "--out", str(out), "--seconds", "14"],
               cli_env, timeout=200)  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Montage is running at" in demo.stdout  # it did not start a second stack
    video = Path(demo.stdout.strip().splitlines()[-1].removeprefix("video: "))
    assert video.parent == out and video.suffix == ".mp4" and decodes(video) == ""


def test_events_follows_the_users_stream(cli_env: dict[str, str], finished_job: FinishedJob) -> None:
    """``montage events``: the user's stream (issue #25); ``--from-start`` replays the user's log, in
    which the shared finished job's every event is, with its job id. No job of its own."""

    async def mint() -> str:
        async with aiohttp.ClientSession() as session:
            return await dev_token(session, cli_env["MONTAGE_URL"], finished_job.user)

    env = {**cli_env, "MONTAGE_TOKEN": asyncio.run(mint())}
    logged = [e for e in finished_job.events if e.id and e.event != "state"]
    want = 1 + len(logged)  # the state, then every event of the job's log
    out = run([*MONTAGE, "events", "--from-start", "--json", "--max-events", str(want)], env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0]["event"] == "state" and lines[0]["id"] == "0-0" and lines[0]["data"] == {"jobs": []}
    events = lines[1:]
    assert {e["data"]["job_id"] for e in events} == {finished_job.job_id}
    assert [e["event"] for e in events] == [e.event for e in logged]
    assert [{k: v for k, v in e["data"].items() if k != "job_id"} for e in events] == [e.json() for e in logged]
    # the text form: one line per event, the job's short id first
    text = run([*MONTAGE, "events", "--from-start", "--max-events", "3"], env, timeout=60)
    assert text.returncode == 0, text.stderr
    rows = text.stdout.splitlines()
    assert rows[0] == "active jobs: none" and rows[1].startswith(finished_job.job_id[:8])
