"""The shared aiohttp scaffolding: request ids, error bodies, health and metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, web
from montage_common import web as common_web
from montage_common.errors import BudgetExceededError
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
async def client() -> AsyncIterator[tuple[ClientSession, str]]:
    app = common_web.create_base_app("test-svc")

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    async def budget(request: web.Request) -> web.Response:
        raise BudgetExceededError(job_id="j-1")

    async def fine(request: web.Request) -> web.Response:
        return common_web.json_response({"ok": True})

    async def failing_check() -> None:
        raise ConnectionError("db down")

    app.router.add_get("/boom", boom)
    app.router.add_get("/budget", budget)
    app.router.add_get("/fine", fine)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with ClientSession() as session:
        app[common_web.READY_CHECKS]["db"] = failing_check
        yield session, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_request_id_generated_and_kept(client: tuple[ClientSession, str]) -> None:
    session, base = client
    async with session.get(f"{base}/fine") as resp:
        generated = resp.headers["X-Request-ID"]
        assert uuid.UUID(generated).version == 4
    given = str(uuid.uuid4())
    async with session.get(f"{base}/fine", headers={"X-Request-ID": given}) as resp:
        assert resp.headers["X-Request-ID"] == given
    async with session.get(f"{base}/fine", headers={"X-Request-ID": "bad id\twith spaces"}) as resp:
        assert resp.headers["X-Request-ID"] != "bad id\twith spaces"
    async with session.get(f"{base}/nope") as resp:
        assert resp.status == 404
        assert resp.headers["X-Request-ID"]
        assert (await resp.json())["code"] == "NOT_FOUND"


async def test_unhandled_error_is_spec_body_without_internals(client: tuple[ClientSession, str]) -> None:
    session, base = client
    async with session.get(f"{base}/boom") as resp:
        assert resp.status == 500
        body = await resp.json()
        assert body == {"error": "Internal server error", "code": "INTERNAL_ERROR", "retryable": False, "job_id": None}
        assert "secret internals" not in await resp.text()
    async with session.get(f"{base}/budget") as resp:
        assert resp.status == 402
        assert (await resp.json())["code"] == "BUDGET_EXCEEDED"
        assert (await resp.json())["job_id"] == "j-1"
    async with session.post(f"{base}/fine") as resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == "METHOD_NOT_ALLOWED"


async def test_health_readiness_and_metrics(client: tuple[ClientSession, str]) -> None:
    session, base = client
    async with session.get(f"{base}/healthz") as resp:
        assert resp.status == 200
    async with session.get(f"{base}/readyz") as resp:
        assert resp.status == 503
        assert "db" in (await resp.json())["checks"]
    async with session.get(f"{base}/fine"):
        pass
    async with session.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    requests = families["montage_http_requests"]
    assert any(
        s.labels.get("route") == "/fine" and s.labels.get("service") == "test-svc" and s.value >= 1
        for s in requests.samples
    )
