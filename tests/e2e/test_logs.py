"""Every line the services log is one JSON object, and every request leaves one access line.

Reads the e2e stack's log files (``tests/artifacts/e2e-logs/<service>.log``, the services'
stderr with ``LOG_FORMAT=json``), after requests of this test with known request ids. Runs late
in the session (file order), so the lines of the other end-to-end tests are checked too.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
from montage_contracts.pipeline import STAGES

from tests.stack import LOG_DIR, RunningStack, dev_token, unique

pytestmark = pytest.mark.e2e
SERVICES = ("gateway", "orchestrator", "ragnarok-proxy", *STAGES)


def _lines(service: str) -> list[str]:
    path = LOG_DIR / f"{service}.log"
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []


async def test_every_log_line_is_json_and_each_request_has_one_access_line(e2e_stack: RunningStack) -> None:
    ids: dict[str, tuple[str, str, int]] = {}
    async with aiohttp.ClientSession() as s:
        token = await dev_token(s, e2e_stack.url, unique("logger"))
        auth = {"Authorization": f"Bearer {token}"}
        for method, path, expected in [
            ("GET", "/api/v1/jobs", 200),
            ("GET", f"/api/v1/jobs/{uuid.uuid4()}", 404),
            ("GET", "/api/v1/nope", 404),
            ("POST", "/api/v1/health", 405),
            ("GET", "/api/v1/health", 200),
        ]:
            rid = f"logtest-{uuid.uuid4().hex}"
            async with s.request(method, f"{e2e_stack.url}{path}", headers={**auth, "X-Request-ID": rid}) as r:
                assert r.status == expected, (path, await r.text())
            ids[rid] = (method, path, expected)
    await asyncio.sleep(0.5)  # the services flush their stderr line by line; this only spans the write

    assert _lines("gateway") and _lines("orchestrator")
    for service in SERVICES:  # a worker whose stage has not run yet in this session may be silent
        for line in _lines(service):
            record = json.loads(line)  # raises on any plain-text line
            assert isinstance(record, dict) and "event" in record and "level" in record, (service, line)

    gateway = [json.loads(line) for line in _lines("gateway")]
    orchestrator = [json.loads(line) for line in _lines("orchestrator")]
    for rid, (method, _path, status) in ids.items():
        mine = [r for r in gateway if r.get("event") == "access" and r.get("request_id") == rid]
        assert len(mine) == 1, (rid, mine)
        assert mine[0]["method"] == method and mine[0]["status"] == status
        assert isinstance(mine[0]["duration_ms"], float) and mine[0]["route"]
    forwarded = next(rid for rid, (_m, path, _s) in ids.items() if path == "/api/v1/jobs")
    behind = [r for r in orchestrator if r.get("event") == "access" and r.get("request_id") == forwarded]
    assert len(behind) == 1 and behind[0]["user_id"] and behind[0]["route"] == "/api/v1/jobs"
