"""The whole system, once per test session, started the way ``make up`` starts it.

Every service is its own OS process (``montage_dev.devstack.Stack``) on random free ports,
against the session's real Redis (a namespace of its own) and a fresh Postgres database, with
low-resolution render settings so a job takes seconds. Each service's output goes to
``tests/artifacts/e2e-logs/<service>.log``. Tests talk to the gateway over HTTP only; where a
test must look behind it (storage, queues) it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from montage_cli.client import MontageClient
from montage_common.redis import create_redis
from montage_dev.devstack import ROOT, ServiceSpec, Stack, free_port

from tests.e2e.flows import FinishedJob, run_job

ARTIFACTS = ROOT / "tests" / "artifacts"
LOG_DIR = ARTIFACTS / "e2e-logs"
SONG_SECONDS = 14.0
HEALTH_TIMEOUT = 90.0

# Small and fast: what a job renders in the suite.
E2E_ENV = {
    "VIDEO_WIDTH": "160",
    "VIDEO_HEIGHT": "90",
    "VIDEO_FPS": "12",
    "X264_PRESET": "ultrafast",
    "AUDIO_BITRATE": "64k",
    "CLAIM_IDLE_MS": "4000",  # a SIGKILLed worker's task is reclaimed after 4 s
    # A worker's blocking read outlasts the stages before video_generator, so a worker frozen
    # while idle (test_worker_kill) is still the one Redis hands the video task to.
    "STREAM_BLOCK_MS": "8000",
    "SSE_CLOSE_AFTER_FINAL_SECONDS": "2",
    "LOG_FORMAT": "json",
    # A client that has not sent its whole upload by then gets 408 (tests/security); the suite's
    # songs are a few hundred KB, sent in milliseconds.
    "UPLOAD_TIMEOUT_SECONDS": "8",
    # A test may make one stage of one job fail (montage_stages.faults; development only).
    "FAULT_INJECTION": "true",
}


@dataclass
class LoggedStack(Stack):
    """The devstack, with each process's output in its own log file instead of our stdout."""

    log_dir: Path = LOG_DIR

    def spawn(self, spec: ServiceSpec, color: str = "36") -> subprocess.Popen[bytes]:
        self.specs[spec.name] = spec
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{spec.name}.log").open("ab") as log:
            proc = subprocess.Popen(
                spec.argv, env=spec.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[spec.name] = proc
        return proc


def stack_on_free_ports(
    var_dir: Path, env: dict[str, str], extra_env: dict[str, str], *, log_dir: Path = LOG_DIR
) -> LoggedStack:
    """A stack like ``make up``'s with every service (API and ops ports) on a free port."""
    return LoggedStack.on_free_ports(var_dir, env=env, extra_env=dict(extra_env), log_dir=log_dir)


# A fake-provider stack must not inherit real provider addresses from the caller's environment.
PROVIDER_SETTINGS = ("RAGNAROK_URL", "TRINITY_URL", "LLM_URL", "STT_URL", "IMAGE_PROVIDER_URL", "VIDEO_PROVIDER")


def service_env(
    redis_url: str, database_url: str, namespace: str, var_dir: Path, *, fake_providers: bool = False
) -> dict[str, str]:
    """The environment every test stack's services share: this process's (without pytest's and the
    launcher's own variables), the test's Redis namespace and database, development mode, storage
    under ``var_dir``; with ``fake_providers`` the provider path against the stand-ins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "PYTEST_"))}
    env |= {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "REDIS_NAMESPACE": namespace,
        "ENVIRONMENT": "development",
        "STORAGE_DIR": str(var_dir / "storage"),
    }
    if fake_providers:
        for key in PROVIDER_SETTINGS:
            env.pop(key, None)
        env["PROVIDERS"] = "fake"
    return env


@dataclass
class RunningStack:
    stack: LoggedStack
    url: str
    var_dir: Path
    redis_url: str
    namespace: str
    storage_dir: Path
    timings: dict[str, float] = field(default_factory=dict)


async def _wait_healthy(url: str, stack: Stack, limit: float) -> dict[str, object]:
    deadline = time.monotonic() + limit
    last: object = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        while time.monotonic() < deadline:
            dead = [n for n, p in stack.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"services exited during start-up: {dead} (see {LOG_DIR})")
            try:
                async with s.get(f"{url}/api/v1/health") as r:
                    body: dict[str, object] = await r.json(content_type=None)
                    last = body
                    if r.status == 200:
                        return body
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.3)
    raise RuntimeError(f"the stack did not become healthy in {limit:.0f} s: {last} (see {LOG_DIR})")


@contextlib.contextmanager
def started(stack: LoggedStack, redis_url: str, namespace: str, *, second: str | None = None) -> Iterator[str]:
    """``stack`` started and healthy (with a second process of the service ``second``, reading the
    same streams on its own ops port, when given): yields the gateway's URL; stops the stack and
    drops the namespace's keys afterwards."""
    url = f"http://127.0.0.1:{stack.gateway_port}"
    try:
        stack.start(timeout=60)
        if second is not None:
            first = stack.specs[second]
            ops = free_port()
            stack.spawn(ServiceSpec(f"{second}-2", list(first.argv), {**first.env, "OPS_PORT": str(ops)}, ops_port=ops))
        asyncio.run(_wait_healthy(url, stack, HEALTH_TIMEOUT))
        yield url
    finally:
        stack.stop()
        asyncio.run(_drop_namespace(redis_url, namespace))


@pytest.fixture(scope="session")
def e2e_database_url(server_database_url: str) -> Iterator[str]:
    """A database of the suite's own (the stack's services migrate it), dropped at the end."""
    with fresh_database(server_database_url, "montage_e2e") as url:
        yield url


@contextlib.contextmanager
def fresh_database(server_database_url: str, prefix: str) -> Iterator[str]:
    """A new empty database on the server, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield urlunsplit(urlsplit(server_database_url)._replace(path=f"/{name}"))
    with contextlib.suppress(Exception):
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def e2e_stack(
    redis_url: str, e2e_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    var_dir = tmp_path_factory.mktemp("stack")
    namespace = f"e2e{uuid.uuid4().hex[:10]}"
    env = service_env(redis_url, e2e_database_url, namespace, var_dir)
    if LOG_DIR.exists():
        for old in LOG_DIR.glob("*.log"):
            old.unlink()
    stack = stack_on_free_ports(var_dir, env, E2E_ENV)
    begun = time.monotonic()
    with started(stack, redis_url, namespace) as url:
        running = RunningStack(stack, url, var_dir, redis_url, namespace, var_dir / "storage")
        running.timings["start_seconds"] = time.monotonic() - begun
        yield running


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one query on the stack's database (a test looking behind the gateway)."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _drop_namespace(redis_url: str, namespace: str) -> None:
    """Remove the suite's keys from the shared Redis (its namespace only; nothing else is touched)."""
    redis = create_redis(redis_url)
    try:
        for pattern in (f"{namespace}:*", f"{{{namespace}}}:*"):
            async for key in redis.scan_iter(match=pattern, count=1000):
                await redis.delete(key)
    finally:
        await redis.aclose()


def synth_song(out: Path, seconds: float) -> Path:
    """A real song (drums, bass, chords) of ``seconds`` as MP3 at ``out``, by the stage workers' synthesizer."""
    subprocess.run(
        [sys.executable, "-m", "montage_stages.media.synth", str(out), "--seconds", str(seconds), "--bpm", "120"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.fixture(scope="session")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ~14 s song (drums, bass, chords) as MP3, made by the stage workers' synthesizer."""
    out = tmp_path_factory.mktemp("songs") / "e2e-song.mp3"
    return synth_song(out, SONG_SECONDS)


async def dev_token(session: aiohttp.ClientSession, url: str, user_id: str) -> str:
    async with session.post(f"{url}/api/v1/dev/token", json={"user_id": user_id}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    return str(body.get("access_token") or body["token"])


async def when_final(
    session: aiohttp.ClientSession, url: str, job_id: str, auth: dict[str, str], *, within: float, every: float
) -> dict[str, Any]:
    """The job's status once ``completed`` or ``failed``, asked of the gateway every ``every`` s
    (bounded by ``within`` s)."""
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with session.get(f"{url}/api/v1/jobs/{job_id}", headers=auth) as r:
            body = dict(await r.json())
        if body.get("status") in ("completed", "failed"):
            return body
        await asyncio.sleep(every)
    raise AssertionError(f"job {job_id} not final: {body}")


async def stand_in(
    session: aiohttp.ClientSession, base: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A call of a stand-in's test routes at ``base``: GET ``path``, or POST ``body`` to it."""
    method = session.get if body is None else session.post
    async with method(f"{base}{path}", **({} if body is None else {"json": body})) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


ClientFactory = Callable[[str], Awaitable[MontageClient]]


@pytest.fixture
async def as_user(e2e_stack: RunningStack) -> AsyncIterator[ClientFactory]:
    """``await as_user("alice")``: an HTTP client of the gateway signed in as that user."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=90))

    async def make(user: str) -> MontageClient:
        return MontageClient(session, e2e_stack.url, await dev_token(session, e2e_stack.url, user))

    yield make
    await session.close()


@pytest.fixture(scope="session")
def finished_job(
    e2e_stack: RunningStack, song: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FinishedJob]:
    """One job run from upload to download (shared by the tests that need a finished job)."""
    out = tmp_path_factory.mktemp("downloads")
    user = unique("alice")

    async def go() -> FinishedJob:
        async with aiohttp.ClientSession() as session:
            client = MontageClient(session, e2e_stack.url, await dev_token(session, e2e_stack.url, user))
            return await run_job(client, song, user, out)

    job = asyncio.run(go())
    e2e_stack.timings["job_seconds"] = job.seconds
    yield job


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
