"""The whole stack (every service its own process, as ``make up`` starts it) on a Redis the test
controls: a lone server, a Sentinel-managed primary with a replica, or a 3-primary cluster.

Lean on purpose (CI time): the suite's low-resolution render settings, a short song, one
worker per stage, and ``JOB_HEARTBEAT_SECONDS=1`` so a stage Redis lost is re-dispatched ~2 s
after it goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from montage_dev.devstack import EmbeddedCluster, EmbeddedRedis, free_port, redis_executable, wait_port

from tests.e2e.flows import PROMPT
from tests.stack import (
    ARTIFACTS,
    E2E_ENV,
    LoggedStack,
    _wait_healthy,
    dev_token,
    fresh_database,
    stack_on_free_ports,
)

LOGS = ARTIFACTS / "redis-failover-logs"
FAST_ENV = {**E2E_ENV, "JOB_HEARTBEAT_SECONDS": "1"}


def redis_version() -> tuple[int, ...]:
    out = subprocess.run([redis_executable(), "--version"], capture_output=True, text=True, check=True).stdout
    v = next(p for p in out.split() if p.startswith("v=")).removeprefix("v=")
    return tuple(int(x) for x in v.split(".")[:2])


@dataclass
class Running:
    stack: LoggedStack
    url: str
    env: dict[str, str]


@contextlib.contextmanager
def stack_on(server_database_url: str, tmp: Path, redis_env: dict[str, str], name: str) -> Iterator[Running]:
    """A stack whose services use ``redis_env`` (REDIS_URL and friends), logs under ``LOGS/name``."""
    with fresh_database(server_database_url, "montage_redis") as database_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "PYTEST_", "REDIS_"))},
            **redis_env,
            "DATABASE_URL": database_url,
            "ENVIRONMENT": "development",
            "STORAGE_DIR": str(tmp / "storage"),
        }
        log_dir = LOGS / name
        shutil.rmtree(log_dir, ignore_errors=True)
        stack = stack_on_free_ports(tmp / "var", env, FAST_ENV, log_dir=log_dir)
        try:
            stack.start(timeout=90)
            url = f"http://127.0.0.1:{stack.gateway_port}"
            asyncio.run(_wait_healthy(url, stack, 120))
            yield Running(stack, url, env)
        finally:
            stack.stop()


async def call(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with s.request(method, url, **kw) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else {}
        return r.status, body


async def submit(s: aiohttp.ClientSession, url: str, song: Path, auth: dict[str, str]) -> str:
    form = aiohttp.FormData()
    form.add_field("user_prompt", PROMPT)
    form.add_field("audio_file", song.read_bytes(), filename="song.mp3", content_type="audio/mpeg")
    status, body = await call(s, "POST", f"{url}/api/v1/upload-audio", data=form, headers=auth)
    assert status == 201, body
    return str(body["job_id"])


async def signed_in(s: aiohttp.ClientSession, url: str, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {await dev_token(s, url, user)}"}


async def wait_status(
    s: aiohttp.ClientSession, url: str, job: str, auth: dict[str, str], wanted: set[str], limit: float = 240.0
) -> dict[str, Any]:
    """Poll the job until its status is one of ``wanted`` (a liveness guard, not a time bound)."""
    deadline = time.monotonic() + limit
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            status, body = await call(s, "GET", f"{url}/api/v1/jobs/{job}", headers=auth)
            if status == 200 and (body["status"] in wanted or body["status"] in ("completed", "failed")):
                return body
        await asyncio.sleep(0.5)
    raise AssertionError(f"job {job} never reached {wanted}: {body}")


async def wait_stage(
    s: aiohttp.ClientSession, url: str, job: str, auth: dict[str, str], stages: set[str], limit: float = 240.0
) -> dict[str, Any]:
    """Poll the job until it is processing one of ``stages`` (liveness guard)."""
    deadline = time.monotonic() + limit
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            status, body = await call(s, "GET", f"{url}/api/v1/jobs/{job}", headers=auth)
            if status == 200 and (body.get("current_stage") in stages or body["status"] in ("completed", "failed")):
                return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job} never reached {stages}: {body}")


# --- Cluster ----------------------------------------------------------------------------
@contextlib.contextmanager
def three_primaries(data_dir: Path, *, kill: bool = False) -> Iterator[EmbeddedCluster]:
    """A started Redis Cluster of three primaries under ``data_dir``, stopped afterwards; with
    ``kill`` its nodes are SIGKILLed first, for a test that keeps nothing in them (a graceful stop of
    three cluster nodes takes ~10 s)."""
    cluster = EmbeddedCluster(data_dir, primaries=3)
    try:
        cluster.start()
        yield cluster
    finally:
        if kill:
            for node in cluster.nodes:
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.kill()
                    node.proc.wait()
        cluster.stop()


# --- Sentinel ---------------------------------------------------------------------------
@dataclass
class SentinelSet:
    """A primary, a replica and one Sentinel (quorum 1) on local ports."""

    root: Path
    master: str = "montage"
    primary: EmbeddedRedis | None = None
    replica: EmbeddedRedis | None = None
    sentinel_port: int = 0
    sentinel: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        self.primary = EmbeddedRedis(self.root / "primary")
        self.primary.start()
        self.replica = EmbeddedRedis(
            self.root / "replica", extra_args=("--replicaof", "127.0.0.1", str(self.primary.port))
        )
        self.replica.start()
        self.sentinel_port = free_port()
        conf = self.root / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.root}\n"
            f"sentinel monitor {self.master} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.master} 1000\n"
            f"sentinel failover-timeout {self.master} 10000\n"
            f"sentinel parallel-syncs {self.master} 1\n"
            f"logfile {self.root / 'sentinel.log'}\n"
        )
        self.sentinel = subprocess.Popen(
            [redis_executable(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.sentinel_port, time.monotonic() + 20)

    @property
    def env(self) -> dict[str, str]:
        assert self.primary is not None
        return {
            "REDIS_URL": f"redis://127.0.0.1:{self.primary.port}/0",
            "REDIS_SENTINELS": f"127.0.0.1:{self.sentinel_port}",
            "REDIS_SENTINEL_MASTER": self.master,
        }

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            self.sentinel.wait(10)
        for server in (self.replica, self.primary):
            if server is not None:
                server.stop()
