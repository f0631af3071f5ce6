"""A supervised stack and the chaos that is let loose on it (issue #22), shared by
``tests/e2e/test_chaos.py`` and ``bench/chaos.py``.

:func:`supervised_stack` starts the whole system the way ``make up`` does (every service its own
process, two workers per stage) on a fresh database and Redis namespace, and supervises it as
Kubernetes would (``Stack.supervising``: a process that exits, or fails its ``/healthz`` liveness
probe three times in a row, is started again). :func:`run_batch` uploads songs and follows every
job to its end over HTTP; with a :class:`Chaos` it meanwhile SIGKILLs stage workers of every kind
(video_generator coordinators and clip renderers among them) and the orchestrator, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from montage_cli.client import MontageClient
from montage_cli.errors import ApiError
from montage_common.redis import create_redis
from montage_contracts.keys import Keys
from montage_contracts.pipeline import STAGES
from redis.asyncio import Redis

from tests.e2e.flows import PROMPT
from tests.stack import (
    E2E_ENV,
    LoggedStack,
    _drop_namespace,
    _wait_healthy,
    fresh_database,
    service_env,
    stack_on_free_ports,
)

ROOT = Path(__file__).resolve().parents[2]
CHAOS_ENV = {
    **E2E_ENV,
    "CLAIM_IDLE_MS": "3000",  # a killed worker's entries are reclaimed after 3 s
    "STREAM_BLOCK_MS": "1000",
    "JOB_HEARTBEAT_SECONDS": "1",
    "LIVENESS_BOUND_SECONDS": "20",
    "SHUTDOWN_GRACE_SECONDS": "3",
}
POLL_SECONDS = 1.0
JOB_LIMIT_SECONDS = 1200.0  # a hang guard for one batch, not a performance bound


@dataclass
class Supervised:
    stack: LoggedStack
    url: str
    redis_url: str
    namespace: str
    restarts: list[str]

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    def workers(self, stage: str) -> list[str]:
        return sorted(n for n in self.stack.procs if n == stage or n.startswith(f"{stage}-"))

    def name_of_consumer(self, consumer: str) -> str | None:
        """The service name whose current process reads as ``consumer`` (``<host>-<pid>``)."""
        pid = consumer.rsplit("-", 1)[-1]
        return next((n for n, p in self.stack.procs.items() if str(p.pid) == pid), None)


@contextlib.contextmanager
def supervised_stack(
    server_database_url: str, redis_url: str, var_dir: Path, log_dir: Path, extra: dict[str, str] | None = None
) -> Iterator[Supervised]:
    namespace = f"chaos{uuid.uuid4().hex[:8]}"
    with fresh_database(server_database_url, "montage_chaos") as database_url:
        env = service_env(redis_url, database_url, namespace, var_dir)
        stack = stack_on_free_ports(var_dir, env, {**CHAOS_ENV, **(extra or {})}, log_dir=log_dir)
        stack.workers_per_stage = 2
        url = f"http://127.0.0.1:{stack.gateway_port}"
        try:
            stack.start(timeout=90)
            asyncio.run(_wait_healthy(url, stack, 120))
            with stack.supervising(period=1.0) as restarts:
                yield Supervised(stack, url, redis_url, namespace, restarts)
        finally:
            stack.stop()
            asyncio.run(_drop_namespace(redis_url, namespace))


def make_song(out_dir: Path, seconds: float) -> Path:
    path = out_dir / f"song-{seconds:.0f}s.mp3"
    if not path.exists():
        subprocess.run(
            [sys.executable, "-m", "montage_stages.media.synth", str(path), "--seconds", str(seconds), "--bpm", "120"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return path


def song_lengths(jobs: int, low: float = 30.0, high: float = 90.0) -> list[float]:
    """``jobs`` lengths spread evenly over ``[low, high]`` seconds."""
    if jobs <= 1:
        return [low]
    return [round(low + (high - low) * i / (jobs - 1)) for i in range(jobs)]


@dataclass
class JobRun:
    job_id: str
    song_seconds: float
    status: str = ""
    error_code: str | None = None
    error: str | None = None
    seconds: float = 0.0  # upload answered → final status seen


@dataclass
class Kill:
    at: float  # seconds since the batch started
    name: str
    role: str  # e.g. "video coordinator", "clip renderer", "idle"


@dataclass
class Chaos:
    """SIGKILLs one process about every ``interval`` seconds (the first round twice as fast): in
    each round every kind once (the stages and the orchestrator, shuffled; a kind with a process
    holding a task first, and that process).

    Besides, paced by the jobs' progress rather than the clock, so that every kind is hit however
    fast the batch runs: each stage's workers as soon as the batch's first task of that stage is
    in its stream (the one holding it if any), the orchestrator once half the stages have been
    hit, and as soon as there is one, a video_generator coordinating a job's clips and one
    rendering a clip."""

    target: Supervised
    interval: float = 3.0
    seed: int = 0
    kills: list[Kill] = field(default_factory=list)
    started: float = 0.0
    _round: list[str] = field(default_factory=list)  # kinds not killed yet in this round
    _marks: dict[str, bytes | None] = field(default_factory=dict)  # each stage stream's last id before the batch

    async def _last_id(self, redis: Redis, stage: str) -> bytes | None:
        r: Any = redis
        try:
            info = await r.xinfo_stream(self.target.keys.stage_stream(stage))
        except Exception:  # no stream yet
            return None
        last = info.get("last-generated-id")
        return last if isinstance(last, bytes) else str(last).encode()

    async def mark(self) -> None:
        """Note where each stage's stream stands: called before the batch is uploaded."""
        redis = create_redis(self.target.redis_url)
        try:
            self._marks = {stage: await self._last_id(redis, stage) for stage in STAGES}
        finally:
            await redis.aclose()

    def _roles(self) -> dict[str, tuple[str, str]]:
        keys = self.target.keys
        return {
            "video coordinator": (keys.stage_stream("video_generator"), keys.stage_group("video_generator")),
            "clip renderer": (keys.clip_stream(), keys.clip_group()),
        }

    async def _holder(self, redis: Redis, stream: str, group: str) -> str | None:
        r: Any = redis
        with contextlib.suppress(Exception):
            for p in await r.xpending_range(stream, group, min="-", max="+", count=50):
                name = p["consumer"]
                found = self.target.name_of_consumer(name.decode() if isinstance(name, bytes) else str(name))
                if found and found != "orchestrator":
                    return found
        return None

    async def victim(self, redis: Redis, kind: str, rng: random.Random) -> tuple[str, str]:
        if kind == "orchestrator":
            return "orchestrator", "orchestrator"
        keys = self.target.keys
        if holder := await self._holder(redis, keys.stage_stream(kind), keys.stage_group(kind)):
            return holder, "holding a task"
        if kind == "video_generator" and (holder := await self._holder(redis, *self._roles()["clip renderer"])):
            return holder, "clip renderer"
        return rng.choice(self.target.workers(kind)), "idle"

    def _kill(self, name: str, role: str) -> None:
        self.target.stack.kill(name)  # SIGKILL; the supervisor starts it again
        self.kills.append(Kill(round(time.monotonic() - self.started, 1), name, role))

    async def _next(self, redis: Redis, rng: random.Random) -> tuple[str, str]:
        """The next victim: a kind not killed yet in this round, one holding a task first."""
        if not self._round:
            self._round = [*STAGES, "orchestrator"]
            rng.shuffle(self._round)
        for kind in self._round:
            name, role = await self.victim(redis, kind, rng)
            if role != "idle":
                self._round.remove(kind)
                return name, role
        return await self.victim(redis, self._round.pop(), rng)

    async def run(self, started: float, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed)
        redis = create_redis(self.target.redis_url)
        self.started = started
        needed = dict(self._roles())
        unreached = list(STAGES)  # stages whose workers are killed once the batch reaches them
        orchestrator_hit = False
        next_kill = time.monotonic() + self.interval * rng.uniform(0.5, 1.5)
        try:
            for _ in range(1_000_000):  # bounded: ends with the batch
                if stop.is_set():
                    return
                for role, (stream, group) in list(needed.items()):
                    if holder := await self._holder(redis, stream, group):
                        self._kill(holder, role)
                        del needed[role]
                for stage in list(unreached):
                    if await self._last_id(redis, stage) != self._marks.get(stage):
                        self._kill(*await self.victim(redis, stage, rng))
                        unreached.remove(stage)
                if not orchestrator_hit and len(unreached) <= len(STAGES) // 2:
                    self._kill("orchestrator", "orchestrator")
                    orchestrator_hit = True
                if time.monotonic() >= next_kill:
                    self._kill(*await self._next(redis, rng))
                    # the first round twice as fast: every kind is hit while the batch still runs
                    pace = self.interval / 2 if len(self.kills) < len(STAGES) + 3 else self.interval
                    next_kill = time.monotonic() + pace * rng.uniform(0.5, 1.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)
        finally:
            await redis.aclose()


async def _client(session: aiohttp.ClientSession, url: str, user: str) -> MontageClient:
    for _ in range(60):  # the gateway answers even while the orchestrator restarts
        with contextlib.suppress(aiohttp.ClientError, KeyError, AssertionError):
            async with session.post(f"{url}/api/v1/dev/token", json={"user_id": user}) as r:
                assert r.status == 200
                body = await r.json()
                return MontageClient(session, url, str(body["access_token"]))
        await asyncio.sleep(1)
    raise AssertionError("no development token")


async def _status(client: MontageClient, job_id: str) -> dict[str, Any] | None:
    try:
        return await client.job(job_id)
    except (ApiError, aiohttp.ClientError, TimeoutError):
        return None  # the orchestrator is restarting: ask again


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        yield http


@dataclass
class Batch:
    """Jobs uploaded, each with the client of its user and when its upload was answered."""

    runs: list[tuple[JobRun, MontageClient, float]]


async def upload_all(session: aiohttp.ClientSession, target: Supervised, songs: list[tuple[Path, float]]) -> Batch:
    """Upload every song, one user each (the per-user job limit is not what is tested here)."""
    runs: list[tuple[JobRun, MontageClient, float]] = []
    for path, seconds in songs:
        client = await _client(session, target.url, f"chaos-{uuid.uuid4().hex[:8]}")
        created = await client.upload(path, PROMPT)
        runs.append((JobRun(str(created["job_id"]), seconds), client, time.monotonic()))
    return Batch(runs)


async def follow_all(batch: Batch, chaos: Chaos | None = None) -> list[JobRun]:
    """Poll every job until it is final (through restarts of the orchestrator); ``chaos`` meanwhile."""
    started = time.monotonic()
    stop = asyncio.Event()
    killing = asyncio.create_task(chaos.run(started, stop)) if chaos is not None else None
    try:
        for _ in range(int(JOB_LIMIT_SECONDS / POLL_SECONDS)):  # bounded: a hang guard
            for run, client, since in batch.runs:
                if run.status in ("completed", "failed"):
                    continue
                body = await _status(client, run.job_id)
                if body is not None and body["status"] in ("completed", "failed"):
                    run.status, run.error_code = body["status"], body.get("error_code")
                    run.error, run.seconds = body.get("error_message"), round(time.monotonic() - since, 1)
            if all(r.status in ("completed", "failed") for r, _, _ in batch.runs):
                break
            await asyncio.sleep(POLL_SECONDS)
    finally:
        stop.set()
        if killing is not None:
            await asyncio.wait([killing], timeout=30)
    return [r for r, _, _ in batch.runs]


async def run_batch(target: Supervised, songs: list[tuple[Path, float]], chaos: Chaos | None = None) -> list[JobRun]:
    """Upload every song and follow every job to its end; with ``chaos`` meanwhile."""
    if chaos is not None:
        await chaos.mark()
    async with session() as http:
        return await follow_all(await upload_all(http, target, songs), chaos)
