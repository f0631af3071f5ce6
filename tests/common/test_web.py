"""The shared aiohttp scaffolding: request ids, error bodies, health and metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import ClientSession, web
from montage_common import web as common_web
from montage_contracts.errors import BudgetExceededError
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support import raw_http, raw_request


@pytest.fixture
async def client() -> AsyncIterator[tuple[ClientSession, str, str]]:
    app = common_web.create_base_app("test-svc")

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    async def budget(request: web.Request) -> web.Response:
        raise BudgetExceededError(job_id="j-1")

    async def fine(request: web.Request) -> web.Response:
        return common_web.json_response({"ok": True})

    async def failing_check() -> None:
        raise ConnectionError("db down")

    async def redis_down(request: web.Request) -> web.Response:
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    app.router.add_get("/boom", boom)
    app.router.add_get("/budget", budget)
    app.router.add_get("/fine", fine)
    app.router.add_get("/redis-down", redis_down)
    app.router.add_get("/items/{name}", fine)
    runner = common_web.AppRunner(app)  # the runner services run with (parser errors as JSON)
    ops = web.AppRunner(common_web.create_ops_app(app))
    await runner.setup()
    await ops.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    await web.TCPSite(ops, "127.0.0.1", 0).start()
    port, ops_port = runner.addresses[0][1], ops.addresses[0][1]
    async with ClientSession() as session:
        app[common_web.READY_CHECKS]["db"] = failing_check
        yield session, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}"
    await runner.cleanup()
    await ops.cleanup()


async def test_request_id_generated_and_kept(client: tuple[ClientSession, str, str]) -> None:
    session, base, _ops = client
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


async def test_unhandled_error_is_spec_body_without_internals(client: tuple[ClientSession, str, str]) -> None:
    session, base, _ops = client
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
        assert resp.headers["Allow"] == "GET, HEAD"
        assert (await resp.json())["code"] == "METHOD_NOT_ALLOWED"


async def test_health_readiness_and_metrics(client: tuple[ClientSession, str, str]) -> None:
    session, base, ops = client
    for path in ("/healthz", "/readyz", "/metrics"):  # never on the API port
        async with session.get(f"{base}{path}") as resp:
            assert resp.status == 404
    async with session.get(f"{ops}/healthz") as resp:
        assert resp.status == 200
    async with session.get(f"{ops}/readyz") as resp:
        assert resp.status == 503
        assert "db" in (await resp.json())["checks"]
    async with session.get(f"{base}/fine"):
        pass
    async with session.get(f"{ops}/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    requests = families["montage_http_requests"]
    assert any(
        s.labels.get("route") == "/fine" and s.labels.get("service") == "test-svc" and s.value >= 1
        for s in requests.samples
    )


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/x/../upload-audio",
        "/api/v1/x/./upload-audio",
        "/api/v1/x/%2e%2e/upload-audio",
        "/api/v1/x/%2E%2e/upload-audio",
        "/api/v1/x/.%2e/upload-audio",
        "/api/v1/x/%2e/upload-audio",
        "/api/v1/x/%252e%252e/upload-audio",  # double encoding
        "/api/v1/x/%25252e%25252e/upload-audio",  # triple encoding
        "/api/v1/x/..%2fupload-audio",  # an encoded slash
        "/api/v1/x/%2e%2e%2f%2e%2e%2finternal/health",
        "/api/v1/x\\..\\upload-audio",  # backslashes
        "/api/v1/x/%5c..%5cupload-audio",
        "/api/v1/x/%c0%ae%c0%ae/upload-audio",  # overlong UTF-8 for "."
        "/api/v1/x/%e0%80%ae%e0%80%ae/upload-audio",
        "/api/v1/x/%ef%bc%8e%ef%bc%8e/upload-audio",  # fullwidth full stops (NFKC "..")
        "/api/v1/jobs/%00",
        "/api/v1/jobs/a%0d%0aSet-Cookie:x",
    ],
)
def test_unsafe_paths_are_named(path: str) -> None:
    assert common_web.unsafe_path(path) is not None


@pytest.mark.parametrize(
    "path",
    ["/", "/api/v1/jobs/0b0e5c9e-1f0a-4c3e-9a55-3a8f5c3f0e21", "/files/bucket/a.b/c..d.mp4", "/api/v1/jobs?x=../y"],
)
def test_safe_paths_pass(path: str) -> None:
    assert common_web.unsafe_path(path) is None


async def test_dot_segments_are_refused_over_the_wire(client: tuple[ClientSession, str, str]) -> None:
    _session, base, _ops = client
    for path in ("/items/%2e%2e/fine", "/items/../fine", "/items/%252e%252e/fine", "/items/%c0%ae%c0%ae"):
        status, headers, body = await raw_http(base, raw_request("GET", path))
        assert status == 400, path
        assert msgspec.json.decode(body)["code"] == "VALIDATION_ERROR"
        assert headers["x-request-id"]


async def test_a_dependency_down_is_503_retryable(client: tuple[ClientSession, str, str]) -> None:
    session, base, _ops = client
    async with session.get(f"{base}/redis-down") as resp:
        assert resp.status == 503
        body = await resp.json()
        assert body["code"] == "SERVICE_UNAVAILABLE" and body["retryable"] is True
        assert "6379" not in await resp.text()


async def test_server_header_names_no_framework(client: tuple[ClientSession, str, str]) -> None:
    session, base, ops = client
    for url in (f"{base}/fine", f"{base}/nope", f"{ops}/healthz"):
        async with session.get(url) as resp:
            assert resp.headers["Server"] == "montage"
    _status, headers, _ = await raw_http(base, raw_request("GET", "/x" * 5000))
    assert headers["server"] == "montage"


async def test_oversized_request_line_and_headers_get_the_error_body_without_echo(
    client: tuple[ClientSession, str, str],
) -> None:
    _session, base, _ops = client
    marker = "ECHO" * 2500  # 10 KB
    cases = [
        (raw_request("GET", f"/fine?{marker}"), 414),
        (raw_request("GET", "/fine", {"X-Big": marker * 2}), 431),
        (b"GARBAGE\r\n\r\n", 400),
    ]
    for request, expected in cases:
        status, headers, body = await raw_http(base, request)
        assert status == expected, (status, body[:200])
        assert headers["content-type"].startswith("application/json")
        assert headers["x-request-id"]
        assert b"ECHO" not in body and b"GARBAGE" not in body
        assert msgspec.json.decode(body)["code"] == "VALIDATION_ERROR"
