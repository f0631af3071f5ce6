"""Redis killed under a running stack: every endpoint answers 503 or degrades (never 500), the
stack's supervisor restarts the embedded Redis, and the running job then completes.

The stack here has a Redis of its own (the embedded one ``make up`` starts, AOF on), so killing
it disturbs no other test. ``Stack.revive_infra`` is what ``make up``'s supervision loop calls.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.flows import PROMPT
from tests.stack import ARTIFACTS, E2E_ENV, RunningStack, _wait_healthy, dev_token, fresh_database, stack_on_free_ports

LOGS = ARTIFACTS / "redis-down-logs"


@pytest.fixture
def own_redis_stack(server_database_url: str, tmp_path: Path) -> Iterator[RunningStack]:
    with fresh_database(server_database_url, "montage_redis_down") as database_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "PYTEST_")) and k != "REDIS_URL"},
            "DATABASE_URL": database_url,
            "ENVIRONMENT": "development",
            "STORAGE_DIR": str(tmp_path / "storage"),
        }
        stack = stack_on_free_ports(tmp_path, env, E2E_ENV, log_dir=LOGS)
        try:
            stack.start(timeout=60)
            url = f"http://127.0.0.1:{stack.gateway_port}"
            asyncio.run(_wait_healthy(url, stack, 90))
            assert stack.redis is not None
            yield RunningStack(stack, url, tmp_path, stack.redis.url, "montage", tmp_path / "storage")
        finally:
            stack.stop()


async def _call(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    status, body, _ = await _call_with_headers(s, method, url, **kw)
    return status, body


async def _call_with_headers(
    s: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with s.request(method, url, **kw) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else {}
        return r.status, body, r.headers


async def test_redis_killed_then_revived(own_redis_stack: RunningStack, song: Path) -> None:
    stack, url = own_redis_stack.stack, own_redis_stack.url
    assert stack.redis is not None and stack.redis.proc is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        auth = {"Authorization": f"Bearer {await dev_token(s, url, 'rita')}"}
        form = aiohttp.FormData()
        form.add_field("user_prompt", PROMPT)
        form.add_field("audio_file", song.read_bytes(), filename="song.mp3", content_type="audio/mpeg")
        status, created = await _call(s, "POST", f"{url}/api/v1/upload-audio", data=form, headers=auth)
        assert status == 201, created
        job = created["job_id"]

        os.kill(stack.redis.proc.pid, signal.SIGKILL)
        stack.redis.proc.wait()
        song_form = aiohttp.FormData()
        song_form.add_field("user_prompt", PROMPT)
        song_form.add_field("audio_file", song.read_bytes(), filename="song.mp3", content_type="audio/mpeg")
        probes: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", f"/api/v1/jobs/{job}", {}),
            ("GET", "/api/v1/jobs", {}),
            ("POST", f"/api/v1/jobs/{job}/cancel", {}),
            ("POST", f"/api/v1/jobs/{job}/stream-ticket", {}),
            ("GET", f"/api/v1/jobs/{job}/stream", {}),
            ("GET", f"/api/v1/jobs/{job}/download", {}),
            ("POST", "/api/v1/upload-audio", {"data": song_form}),
            ("GET", "/api/v1/health", {}),
        ]
        answers: dict[str, int] = {}
        for method, path, kw in probes:
            status, body, headers = await _call_with_headers(s, method, f"{url}{path}", headers=auth, **kw)
            answers[f"{method} {path}"] = status
            assert status != 500, (method, path, body)
            if status == 503:  # every 503 says when to come back
                assert int(headers.get("Retry-After", "0")) >= 1, (method, path, dict(headers))
            if status == 503 and path != "/api/v1/health":
                assert body["code"] == "SERVICE_UNAVAILABLE" and body["retryable"] is True, (path, body)
        # reads degrade to Postgres; what needs Redis says so; the job limit fails closed
        assert answers[f"GET /api/v1/jobs/{job}"] == 200, answers
        assert answers["GET /api/v1/jobs"] == 200, answers
        assert answers[f"POST /api/v1/jobs/{job}/cancel"] == 503, answers
        assert answers[f"POST /api/v1/jobs/{job}/stream-ticket"] == 503, answers
        assert answers[f"GET /api/v1/jobs/{job}/stream"] == 503, answers
        assert answers["POST /api/v1/upload-audio"] == 503, answers
        assert answers["GET /api/v1/health"] == 503, answers

        assert stack.revive_infra() == ["redis"]  # what make up's loop does when it sees Redis gone
        deadline = time.monotonic() + 180  # liveness guard only
        final: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, final = await _call(s, "GET", f"{url}/api/v1/jobs/{job}", headers=auth)
            if status == 200 and final["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.5)
        assert final.get("status") == "completed", final
        status, ticket = await _call(s, "POST", f"{url}/api/v1/jobs/{job}/stream-ticket", headers=auth)
        assert status == 201, ticket
        async with s.get(f"{url}/api/v1/jobs/{job}/stream", params={"ticket": ticket["ticket"]}) as r:
            assert r.status == 200
            assert (await r.content.readline()).startswith(b"event: state")
