"""(6) The Nexus flow of spec 000 through the gateway, against the development stand-in RAGNAROK."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from montage_cli.client import MontageClient
from montage_cli.errors import ApiError

from tests.stack import ClientFactory, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
NEXUS = "/api/nexus/ragnarok"


async def poll_until_final(client: MontageClient, tracking_url: str, limit: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            job: dict[str, Any] = await client.call("GET", tracking_url)
            if job["status"] in ("completed", "failed"):
                return job
            await asyncio.sleep(0.5)


async def test_enriched_generation_is_polled_to_completion(as_user: ClientFactory) -> None:
    client = await as_user(unique("nexus"))
    body = await client.call(
        "POST", f"{NEXUS}/generate/enriched", json={"company_name": unique("Barrios A2I"), "industry": "AI Automation"}
    )
    assert body["job_id"].startswith("job_") and body["workflow_id"] and body["status"] == "queued"
    assert body["tracking_url"] == f"{NEXUS}/jobs/{body['job_id']}"
    assert body["trace_id"].startswith("nxs_") and "enrichment" in body

    done = await poll_until_final(client, body["tracking_url"])
    assert done["status"] == "completed", done
    assert done["job_id"] == body["job_id"] and done["workflow_id"] == body["workflow_id"]
    assert done["video_url"] and isinstance(done["cost_usd"], float | int) and 0 <= done["quality_score"] <= 1

    stranger = await as_user(unique("stranger"))
    with pytest.raises(ApiError) as denied:
        await stranger.call("GET", body["tracking_url"])
    assert denied.value.status in (403, 404)


async def test_daily_limit_429_passes_through(as_user: ClientFactory) -> None:
    client = await as_user(unique("nexus"))
    business = unique("Test")
    for _ in range(3):
        ok = await client.call("POST", f"{NEXUS}/direct/submit", params={"business_name": business})
        assert ok["status"] == "queued" and ok["job_id"].startswith("job_")
    with pytest.raises(ApiError) as info:
        await client.call("POST", f"{NEXUS}/direct/submit", params={"business_name": business})
    assert info.value.status == 429
    assert info.value.body["detail"] == "Daily limit (3 workflows) exceeded"
