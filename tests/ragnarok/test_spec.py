"""The Nexus spec's verification commands, against the proxy (what the gateway forwards to)."""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from montage_common.web import create_base_app
from montage_contracts.keys import Keys
from montage_ragnarok.settings import ProxySettings
from redis.asyncio import Redis

from tests.support import ops_server

from .conftest import Served, headers, ragnarok_events, unique, wait_for

P = "/api/nexus/ragnarok"
TRACE = re.compile(r"^nxs_\d{10}_[0-9a-f]+$")


async def poll_until_final(http: aiohttp.ClientSession, proxy: str, job_id: str, user: str = "user-1") -> Any:
    async def final() -> Any:
        async with http.get(f"{proxy}{P}/jobs/{job_id}", headers=headers(user)) as resp:
            assert resp.status == 200
            body = await resp.json()
        return body if body["status"] in ("completed", "failed") else None

    return await wait_for(final)


async def test_daily_limit_429_passes_through_with_detail(
    http: aiohttp.ClientSession, proxy: str, fake_ragnarok: Served
) -> None:
    business = unique("Test")
    for _ in range(3):
        async with http.post(f"{proxy}{P}/direct/submit", params={"business_name": business}, headers=headers()) as r:
            assert r.status == 202, await r.text()
    async with http.post(f"{proxy}{P}/direct/submit", params={"business_name": business}, headers=headers()) as r:
        body = await r.json()
        assert r.status == 429
        assert int(r.headers["Retry-After"]) > 0
    assert body["detail"] == "Daily limit (3 workflows) exceeded"
    assert body["error"] == body["detail"]
    assert body["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["retryable"] is True
    assert body["job_id"] is None
    assert TRACE.match(body["trace_id"])
    assert fake_ragnarok.state.submissions == 3


async def test_bad_input_400_passes_through(http: aiohttp.ClientSession, proxy: str) -> None:
    async with http.post(
        f"{proxy}{P}/direct/submit",
        params={"business_name": unique("Test")},
        json={"duration_seconds": 1},
        headers=headers(),
    ) as r:
        assert r.status == 400
        body = await r.json()
    assert body["detail"] == "duration_seconds must be a number between 5 and 120"
    assert body["code"] == "VALIDATION_ERROR"


async def test_enriched_generation_shape_and_polling_to_completed(
    http: aiohttp.ClientSession,
    proxy: str,
    fake_ragnarok: Served,
    fake_trinity: Served,
    redis: Redis,
    keys: Keys,
) -> None:
    company = unique("Barrios A2I")
    async with http.post(
        f"{proxy}{P}/generate/enriched", json={"company_name": company, "industry": "AI Automation"}, headers=headers()
    ) as r:
        assert r.status == 202, await r.text()
        body = await r.json()
    assert set(body) == {"job_id", "workflow_id", "status", "tracking_url", "enrichment", "trace_id"}
    assert body["job_id"].startswith("job_")
    assert body["workflow_id"] in fake_ragnarok.state.workflows
    assert body["status"] == "queued"
    assert body["tracking_url"] == f"{P}/jobs/{body['job_id']}"
    assert TRACE.match(body["trace_id"])
    assert body["enrichment"]["available"] is True
    assert body["enrichment"]["company_name"] == company
    # the trace id went out on the outgoing calls
    assert body["trace_id"] in fake_trinity.state.trace_ids
    assert fake_ragnarok.state.workflows[body["workflow_id"]].trace_id == body["trace_id"]

    done = await poll_until_final(http, proxy, body["job_id"])
    assert done["status"] == "completed"
    assert done["workflow_id"] == body["workflow_id"]
    assert done["video_url"] == f"s3://commercials/1080p/{body['workflow_id']}.mp4"
    assert done["cost_usd"] == 2.64
    assert done["quality_score"] == 0.88
    assert done["enrichment"] == body["enrichment"]

    async def event() -> Any:
        return [e for e in await ragnarok_events(redis, keys) if e.job_id == body["job_id"]]

    (finished, *_) = await wait_for(event)
    assert (finished.status, finished.user_id, finished.workflow_id) == ("completed", "user-1", body["workflow_id"])
    assert float(finished.cost_usd) == 2.64
    assert finished.video_url == done["video_url"]


async def test_failed_workflow_reports_error(http: aiohttp.ClientSession, proxy: str) -> None:
    async with http.post(
        f"{proxy}{P}/direct/submit",
        params={"business_name": unique("Fails")},
        json={"simulate_failure": True},
        headers=headers(),
    ) as r:
        job = await r.json()
    done = await poll_until_final(http, proxy, job["job_id"])
    assert done["status"] == "failed"
    assert done["error"] == "Render failed (simulated)"
    assert done["video_url"] is None


async def test_trinity_down_job_still_created(
    http: aiohttp.ClientSession, proxy: str, fake_trinity: Served, fake_ragnarok: Served
) -> None:
    async with http.post(f"{fake_trinity.url}/_control", json={"mode": "503"}) as r:
        assert r.status == 200
    async with http.post(
        f"{proxy}{P}/generate/enriched", json={"company_name": unique("Acme"), "industry": "Retail"}, headers=headers()
    ) as r:
        assert r.status == 202
        body = await r.json()
    assert body["enrichment"] == {"available": False, "reason": "trinity_http_503"}
    assert body["workflow_id"] in fake_ragnarok.state.workflows


async def test_trinity_unreachable_or_unconfigured(
    http: aiohttp.ClientSession,
    start_proxy: Callable[[ProxySettings], Awaitable[str]],
    proxy_settings: Callable[..., ProxySettings],
) -> None:
    # A port bound here and never listened on: connections to it are refused, and no other
    # process can take it meanwhile (a port merely found free could be).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{held.getsockname()[1]}"
        for trinity_url, reason in ((unreachable, "trinity_unreachable"), ("", "not_configured")):
            url = await start_proxy(proxy_settings(trinity_url=trinity_url))
            async with http.post(
                f"{url}{P}/generate/enriched", json={"company_name": unique("Acme")}, headers=headers()
            ) as r:
                assert r.status == 202
                body = await r.json()
            assert body["enrichment"] == {"available": False, "reason": reason}
            assert body["status"] == "queued"


async def test_trace_id_is_bound_into_log_lines(http: aiohttp.ClientSession, proxy: str) -> None:
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        async with http.post(
            f"{proxy}{P}/direct/submit", params={"business_name": unique("Logs")}, headers=headers()
        ) as r:
            body = await r.json()

        async def polled() -> list[Any]:
            return [
                e for e in capture.entries if e["event"] == "job_status_changed" and e.get("job_id") == body["job_id"]
            ]

        changed = await wait_for(polled)
    finally:
        structlog.reset_defaults()
    submitted = [e for e in capture.entries if e["event"] == "job_submitted"]
    assert submitted and submitted[0]["trace_id"] == body["trace_id"]
    assert submitted[0]["job_id"] == body["job_id"]
    assert submitted[0]["workflow_id"] == body["workflow_id"]
    assert changed[0]["trace_id"] == body["trace_id"]  # the poller logs under the job's trace id too


async def test_metrics_exposed(http: aiohttp.ClientSession, proxy: str) -> None:
    async with http.post(
        f"{proxy}{P}/direct/submit", params={"business_name": unique("Metrics")}, headers=headers()
    ) as r:
        job = await r.json()
    await poll_until_final(http, proxy, job["job_id"])

    async def exposed() -> bool:
        # the registry is per process: any ops listener of this process serves the proxy's series
        async with ops_server(create_base_app("ragnarok-proxy")) as ops, http.get(f"{ops}/metrics") as resp:
            text = await resp.text()
        return all(
            name in text
            for name in (
                'montage_ragnarok_calls_total{endpoint="submit",status="201"}',
                'montage_ragnarok_calls_total{endpoint="status",status="200"}',
                "montage_ragnarok_poll_lag_seconds_bucket",
                "montage_ragnarok_poll_lag_last_seconds",
                'montage_ragnarok_jobs{status="queued"}',
            )
        )

    await wait_for(exposed)
