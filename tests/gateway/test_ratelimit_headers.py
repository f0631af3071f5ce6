"""The upload's ``RateLimit`` headers: a refused creation's answer shows its slot given back, and the
window's reset counts from its oldest entry (draft-ietf-httpapi-ratelimit-headers)."""

from __future__ import annotations

from typing import Any

from tests.gateway.conftest import Gateways, Orchestrator, bearer
from tests.gateway.test_ratelimit import upload_form


async def test_refused_creation_shows_its_slot_back(gateways: Gateways, orchestrator: Orchestrator) -> None:
    gw = await gateways.start(job_rate_limit=2)
    headers = bearer("ivan")
    orchestrator.fake.upload_status = 400
    resp = await gw.post("/api/v1/upload-audio", data=upload_form(), headers=headers)
    assert resp.status == 400
    assert resp.headers["RateLimit-Policy"] == '"jobs";q=2;w=3600'
    assert resp.headers["RateLimit"] == '"jobs";r=2;t=0'  # nothing counts: the slot was given back
    orchestrator.fake.upload_status = 201
    seen = []
    for _ in range(3):
        resp = await gw.post("/api/v1/upload-audio", data=upload_form(), headers=headers)
        seen.append((resp.status, resp.headers["RateLimit"].split(";t=")[0]))
    assert seen == [(201, '"jobs";r=1'), (201, '"jobs";r=0'), (429, '"jobs";r=0')]


async def test_reset_counts_from_the_oldest_entry(gw: Any, redis: Any, keys: Any) -> None:
    now_ms = int((await redis.time())[0]) * 1000
    await redis.zadd(keys.rate_limit("judy"), {"old": now_ms - 1_800_000})  # 30 minutes ago
    resp = await gw.post("/api/v1/upload-audio", data=upload_form(), headers=bearer("judy"))
    assert resp.status == 201
    remaining, reset = resp.headers["RateLimit"].removeprefix('"jobs";r=').split(";t=")
    assert remaining == "3" and 1799 <= int(reset) <= 1801
