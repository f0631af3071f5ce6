"""The CLI's SSE parser and its resume-after-drop logic, against a small in-process server."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from montage_cli.client import MontageClient
from montage_cli.errors import ApiError, CliError
from montage_cli.render import JobView
from montage_cli.settings import load_settings
from montage_cli.sse import SseParser, job_events

EVENTS = [
    ("1-0", "stage_update", '{"stage": "audio_parser", "status": "started"}'),
    ("2-0", "progress", '{"progress": 10, "estimated_remaining": 50}'),
    ("3-0", "cost_update", '{"stage": "audio_parser", "cost": 0.01, "total": 0.01}'),
    ("4-0", "message", '{"text": "Planning scenes", "stage": "scene_planner"}'),
    ("5-0", "completed", '{"video_url": "http://x/v.mp4", "total_cost": 0.42}'),
]


def test_parser_fields_comments_multiline_and_ids() -> None:
    p = SseParser()
    lines = [": hello", "event: progress", "id: 7-0", 'data: {"a":', "data: 1}", "", "event: heartbeat", "data: {}", ""]
    out = [ev for line in lines if (ev := p.feed(line)) is not None]
    assert [e.event for e in out] == ["progress", "heartbeat"]
    assert out[0].data == '{"a":\n1}' and out[0].id == "7-0"
    assert out[1].id is None and p.last_id == "7-0"  # heartbeats carry no id and keep the last one


def test_job_view_folds_events() -> None:
    from montage_cli.sse import SseEvent

    v = JobView("j")
    for eid, name, data in EVENTS:
        v.apply(SseEvent(name, data, eid))
    assert v.final == "completed" and v.progress == 100 and v.cost == pytest.approx(0.42)
    assert "100%" in v.line()


async def test_resumes_with_last_event_id_after_a_drop() -> None:
    seen_ids: list[str | None] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        assert request.headers["Authorization"] == "Bearer tok"
        last = request.headers.get("Last-Event-ID")
        seen_ids.append(last)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = 0 if last == "0-0" else [e[0] for e in EVENTS].index(last) + 1
        for i, (eid, name, data) in enumerate(EVENTS[start:]):
            await resp.write(f"id: {eid}\nevent: {name}\ndata: {data}\n\n".encode())
            if last == "0-0" and i == 1:  # drop the first connection after two events
                request.transport.close()  # type: ignore[union-attr]
                return resp
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/jobs/{job_id}/stream", stream)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = MontageClient(session, str(server.make_url("")), "tok")
        delays: list[float] = []
        got = [ev async for ev in job_events(client, "j", backoff=(0.01,), on_reconnect=lambda n, d: delays.append(d))]
    assert [e.id for e in got] == [e[0] for e in EVENTS]  # every event exactly once, in order
    assert seen_ids == ["0-0", "2-0"] and delays == [0.01]  # the whole log first, then the rest


async def test_client_errors_are_not_retried() -> None:
    async def stream(request: web.Request) -> web.Response:
        return web.json_response({"error": "Job not found", "code": "NOT_FOUND", "retryable": False}, status=404)

    app = web.Application()
    app.router.add_get("/api/v1/jobs/{job_id}/stream", stream)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = MontageClient(session, str(server.make_url("")), "tok")
        with pytest.raises(ApiError) as info:
            _ = [ev async for ev in job_events(client, "j", backoff=(0.01,))]
    assert info.value.status == 404 and info.value.code == "NOT_FOUND"


async def test_rate_limit_message_names_the_wait() -> None:
    async def upload(request: web.Request) -> web.Response:
        body = {"error": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED", "retryable": True, "retry_after": 1234}
        return web.json_response(body, status=429, headers={"Retry-After": "1234"})

    app = web.Application()
    app.router.add_post("/api/v1/jobs/{job_id}/cancel", upload)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = MontageClient(session, str(server.make_url("")), "tok")
        with pytest.raises(ApiError) as info:
            await client.cancel("j")
    assert "1234 s" in info.value.message and info.value.retry_after == 1234


async def test_backoff_is_2_4_8_then_gives_up() -> None:
    async def stream(request: web.Request) -> web.Response:
        return web.json_response({"error": "Too many connections", "code": "TOO_MANY_CONNECTIONS"}, status=503)

    app = web.Application()
    app.router.add_get("/api/v1/jobs/{job_id}/stream", stream)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = MontageClient(session, str(server.make_url("")), "tok")
        with pytest.raises(CliError, match="after 4 reconnects"):
            _ = [ev async for ev in job_events(client, "j", max_reconnects=4, sleep=fake_sleep)]
    assert slept == [2.0, 4.0, 8.0, 8.0]


def test_settings_fill_in_from_stack_env(tmp_path: Path) -> None:
    env_file = tmp_path / "stack.env"
    env_file.write_text("REDIS_URL=redis://127.0.0.1:7777/0\nMONTAGE_URL=http://127.0.0.1:9999\n# comment\n")
    s = load_settings({"MONTAGE_STACK_ENV": str(env_file), "MONTAGE_URL": "http://127.0.0.1:1234"})
    assert s.redis_url == "redis://127.0.0.1:7777/0"  # from the file
    assert s.montage_url == "http://127.0.0.1:1234"  # the environment wins
    assert load_settings({"MONTAGE_STACK_ENV": str(tmp_path / "missing")}).montage_url == "http://127.0.0.1:8080"


def test_queue_table_formats_rows() -> None:
    from montage_cli.queues import format_table

    row = {"stream": "composer", "group": "composer", "length": 3, "pending": 1, "lag": 2, "dead_letters": 0,
           "consumers": 1, "live_workers": 1}  # fmt: skip
    table = format_table({"namespace": "montage", "queues": [row], "delayed_retries": 0})
    assert "composer" in table and table.splitlines()[-1] == "retries waiting for backoff: 0"
