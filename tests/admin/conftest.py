"""Fixtures of the operator-console suite: admin and non-admin clients of the running stack, and
a job whose composer task is dead-lettered on purpose.

The dead letter is made with the real workers: the composer worker is stopped (SIGSTOP) before
the job reaches it, the job's clips are moved aside in local storage while the composer task
waits, and the worker is resumed; it cannot read the clips (``NOT_FOUND``, not retryable), so
the task is dead-lettered and the job fails. Putting the clips back makes a retry succeed.
These fixtures look behind the gateway (a process signal, the storage directory) and say so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from montage_cli.client import MontageClient

from tests.e2e.flows import PROMPT
from tests.stack import RunningStack, unique

ADMIN_API = "/api/v1/admin"


async def admin_token(session: aiohttp.ClientSession, url: str, user: str, role: str | None = "admin") -> str:
    body: dict[str, Any] = {"user_id": user}
    if role is not None:
        body["role"] = role
    async with session.post(f"{url}/api/v1/dev/token", json=body) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["access_token"])


@dataclass
class Clients:
    admin: MontageClient
    admin_user: str
    user: MontageClient
    user_name: str
    session: aiohttp.ClientSession


@pytest.fixture
async def clients(e2e_stack: RunningStack) -> AsyncIterator[Clients]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=90))
    admin_user, user = unique("ops-admin"), unique("plain")
    admin = MontageClient(session, e2e_stack.url, await admin_token(session, e2e_stack.url, admin_user))
    plain = MontageClient(session, e2e_stack.url, await admin_token(session, e2e_stack.url, user, role=None))
    yield Clients(admin, admin_user, plain, user, session)
    await session.close()


async def status_of(
    client: MontageClient, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, Any]:
    """Status and body of one request (no raising on 4xx/5xx)."""
    async with client.session.request(method, client.url(path), headers=client.headers(headers), **kwargs) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
        return r.status, body


async def wait_until(check: Callable[[], Awaitable[Any]], *, attempts: int = 600, every: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy (bounded by ``attempts``)."""
    last: Any = None
    for _ in range(attempts):
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met after {attempts} checks; last value: {last!r}")


def _proc(stack: RunningStack, name: str) -> subprocess.Popen[bytes]:
    return stack.stack.procs[name]


@dataclass
class DeadLetteredJob:
    job_id: str
    user: str
    entry_id: str
    clips_aside: Path
    clips_home: Path

    def restore_clips(self) -> None:
        if self.clips_aside.exists():
            self.clips_aside.rename(self.clips_home)


async def submit(stack: RunningStack, session: aiohttp.ClientSession, song: Path, user: str) -> str:
    client = MontageClient(session, stack.url, await admin_token(session, stack.url, user, role=None))
    created = await client.upload(song, PROMPT)
    return str(created["job_id"])


async def dead_letter_a_composer_task(
    stack: RunningStack, admin: MontageClient, session: aiohttp.ClientSession, song: Path, *,
    on_waiting: Callable[[str], Awaitable[None]] | None = None,
) -> DeadLetteredJob:  # fmt: skip
    """Run a job until its composer task is dead-lettered (see the module docstring)."""
    composer = _proc(stack, "composer")
    user = unique("victim")
    os.kill(composer.pid, signal.SIGSTOP)
    try:
        job_id = await submit(stack, session, song, user)

        async def at_composer() -> bool:
            detail = await admin.call("GET", f"{ADMIN_API}/jobs/{job_id}")
            assert detail["job"]["status"] not in ("completed", "failed"), detail["job"]
            return bool(detail["job"]["current_stage"] == "composer")

        await wait_until(at_composer)
        if on_waiting is not None:
            await on_waiting(job_id)
        home = stack.storage_dir / "video-clips" / job_id
        aside = stack.storage_dir / f"aside-{job_id}"
        home.rename(aside)
    finally:
        os.kill(composer.pid, signal.SIGCONT)

    async def dead() -> str | None:
        body = await admin.call("GET", f"{ADMIN_API}/dead-letters", params={"stream": "composer"})
        mine = [d for d in body["dead_letters"] if d["job_id"] == job_id]
        return mine[0]["entry_id"] if mine else None

    entry_id = await wait_until(dead)

    async def failed() -> bool:
        detail = await admin.call("GET", f"{ADMIN_API}/jobs/{job_id}")
        return bool(detail["job"]["status"] == "failed")

    await wait_until(failed)
    return DeadLetteredJob(job_id, user, entry_id, aside, home)
