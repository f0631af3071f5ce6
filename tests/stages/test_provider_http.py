"""Provider calls translate failures at the boundary: 429/5xx/unreachable retryable, 4xx not."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from montage_common.devstack import free_port
from montage_common.errors import GenerationError, RetryableError
from montage_stages.provider_http import post_json


@pytest.fixture
async def provider():  # type: ignore[no-untyped-def]
    """A stand-in OpenAI-compatible endpoint answering with the status the test asks for."""
    seen: list[dict[str, object]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"auth": request.headers.get("Authorization"), "body": body})
        status = int(body["status"])
        return web.json_response({"ok": status == 200}, status=status)

    app = web.Application()
    app.router.add_post("/v1/call", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/v1/call")), seen
    await server.close()


async def test_success_returns_json_and_sends_the_key(provider) -> None:  # type: ignore[no-untyped-def]
    url, seen = provider
    assert await post_json("x", url, {"status": 200}, api_key="k", limit_seconds=5) == {"ok": True}
    assert seen[-1]["auth"] == "Bearer k"
    await post_json("x", url, {"status": 200}, api_key="", limit_seconds=5)
    assert seen[-1]["auth"] is None


@pytest.mark.parametrize(("status", "error"), [(429, RetryableError), (503, RetryableError), (400, GenerationError)])
async def test_failures_are_translated(provider, status: int, error: type[Exception]) -> None:  # type: ignore[no-untyped-def]
    url, _ = provider
    with pytest.raises(error) as caught:
        await post_json("image provider", url, {"status": status}, api_key="k", limit_seconds=5)
    assert f"answered {status}" in str(caught.value)
    assert caught.type is error  # GenerationError must not be mistaken for a retryable one


async def test_unreachable_is_retryable() -> None:
    with pytest.raises(RetryableError, match="unreachable"):
        await post_json("LLM provider", f"http://127.0.0.1:{free_port()}/v1", {}, api_key="", limit_seconds=5)
