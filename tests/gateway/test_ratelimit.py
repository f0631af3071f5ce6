"""Job-creation rate limit: atomic under concurrency, correct Retry-After, failed creations refunded."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import FormData

from tests.gateway.conftest import Gateways, Orchestrator, bearer


def upload_form() -> FormData:
    form = FormData()
    form.add_field("user_prompt", "a slow cinematic journey through neon rain, city lights, long shadows " * 2)
    form.add_field("audio_file", b"ID3" + b"\x00" * 2048, filename="song.mp3", content_type="audio/mpeg")
    return form


async def test_20_concurrent_uploads_create_exactly_5(gw: Any, orchestrator: Orchestrator) -> None:
    headers = bearer("carol")

    async def one() -> tuple[int, dict[str, Any], dict[str, str]]:
        resp = await gw.post("/api/v1/upload-audio", data=upload_form(), headers=headers)
        return resp.status, await resp.json(), dict(resp.headers)

    results = await asyncio.gather(*(one() for _ in range(20)))
    created = [r for r in results if r[0] == 201]
    limited = [r for r in results if r[0] == 429]
    assert len(created) == 5 and len(limited) == 15
    assert len(orchestrator.fake.uploads) == 5  # the others never reached the orchestrator
    for _, body, headers_ in limited:
        assert body["code"] == "RATE_LIMIT_EXCEEDED"
        assert body["limit"] == 5 and body["window"] == "1 hour" and body["retryable"] is True
        assert body["job_id"] is None
        # The oldest entry is a few ms old: it leaves the window in (just under) an hour.
        assert 3590 <= int(headers_["Retry-After"]) <= 3600
        assert body["retry_after"] == int(headers_["Retry-After"])
    # Another user is unaffected.
    resp = await gw.post("/api/v1/upload-audio", data=upload_form(), headers=bearer("dave"))
    assert resp.status == 201


async def test_retry_after_counts_from_the_oldest_entry(gw: Any, redis: Any, keys: Any) -> None:
    # Pretend the user's five creations happened 30 minutes ago and later.
    now_ms = int((await redis.time())[0]) * 1000
    await redis.zadd(keys.rate_limit("erin"), {f"old-{i}": now_ms - 1_800_000 + i * 1000 for i in range(5)})
    resp = await gw.post("/api/v1/upload-audio", data=upload_form(), headers=bearer("erin"))
    assert resp.status == 429
    assert 1799 <= int(resp.headers["Retry-After"]) <= 1801


async def test_failed_creation_returns_its_slot(
    gateways: Gateways, orchestrator: Orchestrator, redis: Any, keys: Any
) -> None:
    gw = await gateways.start(job_rate_limit=2)
    headers = bearer("frank")
    orchestrator.fake.upload_status = 400
    for _ in range(3):
        resp = await gw.post("/api/v1/upload-audio", data=upload_form(), headers=headers)
        assert resp.status == 400
        assert (await resp.json())["code"] == "VALIDATION_ERROR"  # the orchestrator's body, unchanged
    assert await redis.zcard(keys.rate_limit("frank")) == 0
    orchestrator.fake.upload_status = 201
    statuses = [(await gw.post("/api/v1/upload-audio", data=upload_form(), headers=headers)).status for _ in range(3)]
    assert statuses == [201, 201, 429]


async def test_unreachable_orchestrator_returns_the_slot(gateways: Gateways, redis: Any, keys: Any) -> None:
    gw = await gateways.start(orchestrator_url="http://127.0.0.1:9")
    resp = await gw.post("/api/v1/upload-audio", data=upload_form(), headers=bearer("gina"))
    assert resp.status == 503
    assert await redis.zcard(keys.rate_limit("gina")) == 0


async def test_request_guard_limits_per_user(gateways: Gateways) -> None:
    gw = await gateways.start(guard_user_requests=3, guard_ip_requests=1000)
    statuses = [(await gw.get("/api/v1/jobs", headers=bearer("hank"))).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    resp = await gw.get("/api/v1/jobs", headers=bearer("hank"))
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await gw.get("/api/v1/jobs", headers=bearer("ivy"))).status == 200


async def test_request_guard_limits_per_ip_even_without_a_token(gateways: Gateways) -> None:
    gw = await gateways.start(guard_ip_requests=3)
    statuses = [(await gw.get("/api/v1/jobs")).status for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
