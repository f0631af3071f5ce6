"""``montage`` exit codes and ``--json`` output, against a small aiohttp server standing in for the
gateway. Each case runs the real ``main()`` (its own event loop, in a worker thread) and checks
the exit code, that stdout is only JSON when ``--json`` is given, and the message on stderr."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from montage_cli.errors import EXIT_CODES_HELP, Exit
from montage_cli.main import build_parser, main

TOKEN = "good-token"
JOB = {"job_id": "ok", "status": "completed", "progress": 100, "total_cost": 0.42, "created_at": "2026-01-01T00:00:00Z"}
ERRORS: dict[str, tuple[int, str, dict[str, str]]] = {
    "forbidden": (403, "FORBIDDEN", {}),
    "missing": (404, "NOT_FOUND", {}),
    "expired": (410, "GONE", {}),
    "limited": (429, "RATE_LIMIT_EXCEEDED", {"Retry-After": "120"}),
    "overloaded": (503, "SERVICE_UNAVAILABLE", {}),
    "slow-upstream": (504, "TIMEOUT", {}),
    "bad": (400, "VALIDATION_ERROR", {}),
    "broken": (500, "INTERNAL_ERROR", {}),
}


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": f"{code.lower()} here", "code": code, "retryable": status >= 500, "job_id": None}
    return web.json_response(body, status=status, headers=headers)


def _authorized(request: web.Request) -> bool:
    return request.headers.get("Authorization") == f"Bearer {TOKEN}"


async def job(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(401, "UNAUTHORIZED")
    job_id = request.match_info["job_id"]
    if job_id in ERRORS:
        status, code, headers = ERRORS[job_id]
        return _error(status, code, headers)
    return web.json_response({**JOB, "job_id": job_id})


async def stream(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return _error(401, "UNAUTHORIZED")
    job_id = request.match_info["job_id"]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    events = [("1-0", "progress", {"progress": 40}), ("2-0", "message", {"text": "rendering\nclips", "stage": "x"})]
    if job_id == "fails":
        events.append(("3-0", "error", {"error": "composer failed", "code": "MODULE_FAILURE", "retryable": False}))
    else:
        events.append(("3-0", "completed", {"video_url": "/v.mp4", "total_cost": 0.42}))
    await resp.write(b'event: state\ndata: {"status": "processing", "progress": 30}\n\n')
    for eid, name, data in events:
        await resp.write(f"id: {eid}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode())
    return resp


async def upload(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(401, "UNAUTHORIZED")
    form = await request.post()
    prompt = str(form["user_prompt"])
    if prompt.startswith("limit"):
        return _error(429, "RATE_LIMIT_EXCEEDED", {"Retry-After": "3000"})
    job_id = "fails" if prompt.startswith("fail") else "works"
    return web.json_response({"job_id": job_id, "status": "queued", "estimated_cost": "0.40"}, status=201)


async def health(request: web.Request) -> web.Response:
    if request.app[HEALTH]["healthy"]:
        return web.json_response({"status": "healthy", "issues": []})
    return web.json_response({"status": "unhealthy", "issues": ["redis connection failed"]}, status=503)


HEALTH = web.AppKey("health", dict[str, bool])  # mutable: the app is frozen once started


@dataclass
class Gateway:
    url: str
    app: web.Application


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    app = web.Application()
    app[HEALTH] = {"healthy": True}
    app.router.add_get("/api/v1/jobs/{job_id}", job)
    app.router.add_get("/api/v1/jobs/{job_id}/stream", stream)
    app.router.add_post("/api/v1/upload-audio", upload)
    app.router.add_get("/api/v1/health", health)
    server = TestServer(app)
    await server.start_server()
    try:
        yield Gateway(str(server.make_url("")).rstrip("/"), app)
    finally:
        await server.close()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines()]


@pytest.fixture
def montage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    monkeypatch.setenv("MONTAGE_STACK_ENV", str(tmp_path / "none.env"))
    monkeypatch.setenv("MONTAGE_TOKEN", TOKEN)
    monkeypatch.setenv("ENVIRONMENT", "development")

    async def run(*argv: str, env: dict[str, str] | None = None) -> Result:
        for key, value in (env or {}).items():
            if value:
                monkeypatch.setenv(key, value)
            else:
                monkeypatch.delenv(key, raising=False)
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(main, list(argv))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        got = capsys.readouterr()
        return Result(code, got.out, got.err)

    return run


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- HTTP statuses -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("ok", Exit.OK),
        ("forbidden", Exit.AUTH),
        ("missing", Exit.NOT_FOUND),
        ("expired", Exit.NOT_FOUND),
        ("limited", Exit.RATE_LIMITED),
        ("overloaded", Exit.UNAVAILABLE),
        ("slow-upstream", Exit.UNAVAILABLE),
        ("bad", Exit.ERROR),
        ("broken", Exit.ERROR),
    ],
)
async def test_status_exit_codes_and_json(montage: Any, gateway: Gateway, job_id: str, expected: Exit) -> None:
    plain = await montage("--url", gateway.url, "status", job_id)
    assert plain.code == expected, plain.err
    as_json = await montage("--url", gateway.url, "status", job_id, "--json")
    assert as_json.code == expected
    body = json.loads(as_json.out)  # one JSON document, success or not
    if expected == Exit.OK:
        assert body["job_id"] == job_id and not as_json.err
    else:
        status, code, _ = ERRORS[job_id]
        assert body == {**body, "code": code, "status": status, "exit_code": int(expected)}
        assert as_json.err.startswith(f"montage: {status}")


async def test_rate_limited_says_when_to_retry(montage: Any, gateway: Gateway) -> None:
    got = await montage("--url", gateway.url, "status", "limited", "--json")
    assert got.code == Exit.RATE_LIMITED
    assert json.loads(got.out)["retry_after"] == 120
    assert "try again in 120 s" in got.err


async def test_unauthorized(montage: Any, gateway: Gateway) -> None:
    got = await montage("--url", gateway.url, "status", "ok", env={"MONTAGE_TOKEN": "stolen"})
    assert got.code == Exit.AUTH and "401 unauthorized" in got.err


async def test_no_token_in_production_is_an_auth_error(montage: Any, gateway: Gateway) -> None:
    got = await montage("--url", gateway.url, "list", env={"MONTAGE_TOKEN": "", "ENVIRONMENT": "production"})
    assert got.code == Exit.AUTH and "MONTAGE_TOKEN is not set" in got.err


async def test_connection_refused_is_unavailable(montage: Any) -> None:
    got = await montage("--url", closed_port_url(), "status", "ok", "--json")
    assert got.code == Exit.UNAVAILABLE
    assert json.loads(got.out)["code"] == "UNAVAILABLE"
    assert "is the stack running?" in got.err


# --- usage -----------------------------------------------------------------------------------------
async def test_usage_errors(montage: Any, gateway: Gateway, tmp_path: Path) -> None:
    assert (await montage("status")).code == Exit.USAGE  # argparse: missing argument
    assert (await montage("no-such-command")).code == Exit.USAGE
    missing = await montage("--url", gateway.url, "submit", str(tmp_path / "nope.mp3"), "--prompt", "p" * 60)
    assert missing.code == Exit.USAGE and "no such file" in missing.err
    prod = await montage("--url", gateway.url, "token", env={"ENVIRONMENT": "production"})
    assert prod.code == Exit.USAGE and "not available when ENVIRONMENT=production" in prod.err


def test_help_lists_the_exit_codes() -> None:
    text = build_parser().format_help()
    assert EXIT_CODES_HELP in text
    for code in Exit:
        assert f"  {int(code)} " in text, code


# --- watching jobs ---------------------------------------------------------------------------------
async def test_watch_json_lines(montage: Any, gateway: Gateway) -> None:
    got = await montage("--url", gateway.url, "watch", "works", "--json")
    assert got.code == Exit.OK
    lines = got.json_lines()
    assert [line["event"] for line in lines] == ["state", "progress", "message", "completed"]
    assert lines[2]["data"]["text"] == "rendering\nclips"  # a newline in data stays inside its line


async def test_watch_of_a_failing_job_exits_3_and_stays_json(montage: Any, gateway: Gateway) -> None:
    got = await montage("--url", gateway.url, "watch", "fails", "--json")
    assert got.code == Exit.JOB_FAILED
    lines = got.json_lines()
    assert lines[-2]["event"] == "error"
    assert lines[-1] == {
        "error": "job fails failed [MODULE_FAILURE]: composer failed",
        "code": "MODULE_FAILURE",
        "status": None,
        "exit_code": 3,
        "job_id": "fails",
    }
    plain = await montage("--url", gateway.url, "watch", "fails")
    assert plain.code == Exit.JOB_FAILED and "composer failed" in plain.err


async def test_submit_watch_json_is_json_lines_only(montage: Any, gateway: Gateway, tmp_path: Path) -> None:
    song = tmp_path / "song.mp3"
    song.write_bytes(b"ID3" + b"\0" * 64)
    ok = await montage("--url", gateway.url, "submit", str(song), "--prompt", "p" * 60, "--watch", "--json")
    assert ok.code == Exit.OK, ok.err
    lines = ok.json_lines()  # every stdout line parses: no progress bar, no summary text
    assert lines[0]["job_id"] == "works" and lines[-1]["event"] == "completed"
    failed = await montage("--url", gateway.url, "submit", str(song), "--prompt", "fail" * 15, "--watch", "--json")
    assert failed.code == Exit.JOB_FAILED
    assert failed.json_lines()[-1]["exit_code"] == 3
    limited = await montage("--url", gateway.url, "submit", str(song), "--prompt", "limit" * 12, "--watch", "--json")
    assert limited.code == Exit.RATE_LIMITED
    assert [line["code"] for line in limited.json_lines()] == ["RATE_LIMIT_EXCEEDED"]


# --- health ----------------------------------------------------------------------------------------
async def test_health_exit_code(montage: Any, gateway: Gateway) -> None:
    healthy = await montage("--url", gateway.url, "health")
    assert healthy.code == Exit.OK and json.loads(healthy.out)["status"] == "healthy"
    gateway.app[HEALTH]["healthy"] = False
    sick = await montage("--url", gateway.url, "health", "--json")
    assert sick.code == Exit.UNAVAILABLE
    assert json.loads(sick.out)["issues"] == ["redis connection failed"]
    assert "unhealthy: redis connection failed" in sick.err
    down = await montage("--url", closed_port_url(), "health")
    assert down.code == Exit.UNAVAILABLE
