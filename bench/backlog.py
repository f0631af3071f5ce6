"""Benchmark: a backlog of jobs from several users into a stack of fixed capacity.

    .venv/bin/python bench/backlog.py [--users 8] [--jobs 5] [--seconds 14] [--timeout 60] [--max-wait 30]

Starts the whole system as processes (``montage_dev.devstack``: one worker per stage,
``WORKER_CONCURRENCY=1``, low-resolution renders) on a fresh database and Redis namespace, then
every user submits all of its jobs at once, as a browser would: an upload refused at the door
(503) is tried again after its ``Retry-After``, up to ``--retries`` times. Reports jobs completed,
uploads refused at the door, jobs failed with ``TIMEOUT`` (and otherwise), each user's first-job
wait (from its first upload to a worker starting its first job's ``audio_parser``: the
``stage_started`` line of that worker's log) as max and p50, and the error of ``estimated_start``
(queued jobs, read right after their upload) against that start.

To measure another checkout (the same scenario before a change), run this file with that
checkout's interpreter: ``<checkout>/.venv/bin/python bench/backlog.py``; it only uses what every
version has (the devstack, the HTTP API, the workers' logs). Needs ``REDIS_URL`` and
``DATABASE_URL`` (a server: a database of its own is created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from montage_dev.devstack import ROOT, ServiceSpec, Stack

PROMPT = "A neon city at night, rain on glass, a lone dancer under flickering signs, cut on the beat."


@dataclass
class LoggedStack(Stack):
    """The devstack with each process's output in its own file (the workers' logs are read back)."""

    log_dir: Path = Path()

    def spawn(self, spec: ServiceSpec, color: str = "36") -> subprocess.Popen[bytes]:
        self.specs[spec.name] = spec
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{spec.name}.log").open("ab") as log:
            proc = subprocess.Popen(
                spec.argv, env=spec.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[spec.name] = proc
        return proc


@dataclass
class Job:
    user: str
    job_id: str
    uploaded: float  # epoch seconds, when the accepted upload was sent
    estimated_start: float | None = None
    final: dict[str, Any] = field(default_factory=dict)


@dataclass
class User:
    name: str
    token: str
    first_upload: float = 0.0
    jobs: list[Job] = field(default_factory=list)
    refused: int = 0  # 503 answers at the door
    refused_for_good: int = 0  # uploads still refused after every retry
    waits_promised: list[float] = field(default_factory=list)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _upload(session: aiohttp.ClientSession, url: str, user: User, song: bytes, retries: int) -> None:
    for _attempt in range(retries + 1):
        form = aiohttp.FormData()
        form.add_field("user_prompt", PROMPT)
        form.add_field("audio_file", song, filename="song.mp3", content_type="audio/mpeg")
        sent = time.time()
        user.first_upload = min(user.first_upload or sent, sent)
        headers = {"Authorization": f"Bearer {user.token}"}
        async with session.post(f"{url}/api/v1/upload-audio", data=form, headers=headers) as r:
            body = await r.json(content_type=None)
            if r.status == 201:
                job = Job(user.name, body["job_id"], sent)
                user.jobs.append(job)
                async with session.get(f"{url}/api/v1/jobs/{job.job_id}", headers=headers) as s:
                    status = await s.json(content_type=None)
                if status.get("estimated_start"):
                    job.estimated_start = _epoch(status["estimated_start"])
                return
            if r.status != 503:
                raise RuntimeError(f"upload answered {r.status}: {body}")
            user.refused += 1
            if "estimated_wait" in body:
                user.waits_promised.append(float(body["estimated_wait"]))
            await asyncio.sleep(float(r.headers.get("Retry-After", "5")))
    user.refused_for_good += 1


async def _follow(session: aiohttp.ClientSession, url: str, user: User, job: Job, limit: float) -> None:
    headers = {"Authorization": f"Bearer {user.token}"}
    end = time.monotonic() + limit
    while time.monotonic() < end:
        async with session.get(f"{url}/api/v1/jobs/{job.job_id}", headers=headers) as r:
            body = await r.json(content_type=None)
        if body.get("status") in ("completed", "failed"):
            job.final = body
            return
        await asyncio.sleep(0.5)
    job.final = {"status": "unfinished"}


def _worker_starts(log: Path) -> dict[str, float]:
    """When a worker started each job's audio_parser (its ``stage_started`` log lines)."""
    starts: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "stage_started" and rec.get("job_id"):
            starts.setdefault(rec["job_id"], _epoch(rec["timestamp"]))
    return starts


async def _wait_healthy(url: str, limit: float) -> None:
    end = time.monotonic() + limit
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        while time.monotonic() < end:
            try:
                async with s.get(f"{url}/api/v1/health") as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError("the stack did not become healthy")


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = os.environ["DATABASE_URL"]
    db_name = f"montage_bench_{uuid.uuid4().hex[:10]}"
    await _admin(server, f'CREATE DATABASE "{db_name}"')
    database_url = urlunsplit(urlsplit(server)._replace(path=f"/{db_name}"))
    var_dir = Path(tempfile.mkdtemp(prefix="montage-backlog-"))
    song_path = var_dir / "song.mp3"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "montage_stages.media.synth",
            str(song_path),
            "--seconds",
            str(args.seconds),
            "--bpm",
            "120",
        ],
        check=True,
        capture_output=True,
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}",
        "ENVIRONMENT": "development",
        "STORAGE_DIR": str(var_dir / "storage"),
    }
    extra = {
        "VIDEO_WIDTH": "160",
        "VIDEO_HEIGHT": "90",
        "VIDEO_FPS": "12",
        "X264_PRESET": "ultrafast",
        "AUDIO_BITRATE": "64k",
        "LOG_FORMAT": "json",
        "WORKER_CONCURRENCY": "1",
        "JOB_TIMEOUT_SECONDS": str(args.timeout),
        "ADMISSION_MAX_WAIT_SECONDS": str(args.max_wait),
        "USER_MAX_ACTIVE_JOBS": "2",
    }
    stack = LoggedStack.on_free_ports(var_dir, env=env, extra_env=extra, log_dir=var_dir / "logs")
    url = f"http://127.0.0.1:{stack.gateway_port}"
    try:
        stack.start(timeout=90)
        await _wait_healthy(url, 120)
        song = song_path.read_bytes()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            users: list[User] = []
            for i in range(args.users):
                name = f"bench-user-{i}-{uuid.uuid4().hex[:4]}"
                async with session.post(f"{url}/api/v1/dev/token", json={"user_id": name}) as r:
                    users.append(User(name, (await r.json())["access_token"]))
            started = time.monotonic()
            await asyncio.gather(
                *(_upload(session, url, u, song, args.retries) for u in users for _ in range(args.jobs))
            )
            await asyncio.gather(*(_follow(session, url, u, j, args.limit) for u in users for j in u.jobs))
            wall = time.monotonic() - started
        starts = _worker_starts(var_dir / "logs" / "audio_parser.log")
    finally:
        stack.stop()
        await _admin(server, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    jobs = [j for u in users for j in u.jobs]
    first_waits = []
    for u in users:
        begun = [starts[j.job_id] for j in u.jobs if j.job_id in starts]
        if begun:
            first_waits.append(min(begun) - u.first_upload)
    errors = [starts[j.job_id] - j.estimated_start for j in jobs if j.estimated_start and j.job_id in starts]
    codes = [j.final.get("error_code") for j in jobs if j.final.get("status") == "failed"]
    return {
        "jobs_asked": args.users * args.jobs,
        "accepted": len(jobs),
        "completed": sum(j.final.get("status") == "completed" for j in jobs),
        "timeouts": codes.count("TIMEOUT"),
        "other_failures": len(codes) - codes.count("TIMEOUT"),
        "refused_503": sum(u.refused for u in users),
        "refused_for_good": sum(u.refused_for_good for u in users),
        "first_wait_max": max(first_waits, default=float("nan")),
        "first_wait_p50": _p50(first_waits),
        "estimates": len(errors),
        "estimate_error_p50": _p50(errors),  # actual start - estimated start (positive: later than promised)
        "estimate_abs_error_p50": _p50([abs(e) for e in errors]),
        "wall_seconds": wall,
        "load_average": os.getloadavg()[0],
        "checkout": str(ROOT),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=5, help="jobs per user (the rate limit allows 5 an hour)")
    parser.add_argument("--seconds", type=float, default=14.0, help="the song's length")
    parser.add_argument("--timeout", type=float, default=60.0, help="JOB_TIMEOUT_SECONDS")
    parser.add_argument("--max-wait", type=float, default=30.0, help="ADMISSION_MAX_WAIT_SECONDS")
    parser.add_argument("--retries", type=int, default=3, help="retries of an upload refused at the door")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds to wait for each job to finish")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
