"""RAGNAROK answering 503, hanging or unreachable: clients get 503/504 (never 500) and jobs recover."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
from montage_dev.devstack import free_port
from montage_ragnarok.settings import ProxySettings

from .conftest import Served, headers, unique, wait_for

P = "/api/nexus/ragnarok"


async def control(http: aiohttp.ClientSession, fake: Served, **body: Any) -> None:
    async with http.post(f"{fake.url}/_control", json=body) as r:
        assert r.status == 200


async def submit(http: aiohttp.ClientSession, proxy: str) -> aiohttp.ClientResponse:
    async with http.post(
        f"{proxy}{P}/direct/submit", params={"business_name": unique("Outage")}, headers=headers()
    ) as r:
        await r.read()
        return r


async def test_ragnarok_503_is_passed_through(http: aiohttp.ClientSession, proxy: str, fake_ragnarok: Served) -> None:
    await control(http, fake_ragnarok, mode="503")
    async with http.post(f"{proxy}{P}/direct/submit", params={"business_name": unique("Down")}, headers=headers()) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        body = await r.json()
    assert body["detail"] == "RAGNAROK temporarily unavailable"
    assert body["code"] == "SERVICE_UNAVAILABLE"
    assert body["retryable"] is True


async def test_ragnarok_hanging_is_504(http: aiohttp.ClientSession, proxy: str, fake_ragnarok: Served) -> None:
    await control(http, fake_ragnarok, mode="hang")
    async with http.post(
        f"{proxy}{P}/generate/enriched", json={"company_name": unique("Slow")}, headers=headers()
    ) as r:
        assert r.status == 504
        body = await r.json()
    assert body["code"] == "TIMEOUT"
    assert body["detail"] == "RAGNAROK did not answer in time"
    assert body["trace_id"].startswith("nxs_")


async def test_ragnarok_unreachable_is_503(
    http: aiohttp.ClientSession,
    start_proxy: Callable[[ProxySettings], Awaitable[str]],
    proxy_settings: Callable[..., ProxySettings],
) -> None:
    url = await start_proxy(proxy_settings(ragnarok_url=f"http://127.0.0.1:{free_port()}"))
    response = await submit(http, url)
    assert response.status == 503
    async with http.post(f"{url}{P}/direct/submit", params={"business_name": "x"}, headers=headers()) as r:
        assert int(r.headers["Retry-After"]) >= 1  # Montage's own, since RAGNAROK sent none
        body = await r.json()
    assert body["code"] == "SERVICE_UNAVAILABLE"
    assert body["detail"] == "RAGNAROK could not be reached"


async def test_jobs_recover_after_503_and_hang(
    http: aiohttp.ClientSession, proxy: str, fake_ragnarok: Served, database_url: str
) -> None:
    await control(http, fake_ragnarok, step_seconds=0.2)
    jobs = []
    for _ in range(3):
        async with http.post(
            f"{proxy}{P}/direct/submit", params={"business_name": unique("Recover")}, headers=headers()
        ) as r:
            assert r.status == 202
            jobs.append(await r.json())
    conn = await asyncpg.connect(database_url)
    try:
        for mode in ("503", "hang"):
            await control(http, fake_ragnarok, mode=mode)
            polls_before = sum(fake_ragnarok.state.polls.get(j["workflow_id"], 0) for j in jobs)

            async def failing_polls(before: int = polls_before) -> bool:
                # wait until the poller has hit the outage a few times
                return bool(sum(fake_ragnarok.state.polls.get(j["workflow_id"], 0) for j in jobs) >= before + 6)

            await wait_for(failing_polls)
            rows = await conn.fetch(
                "SELECT status, poll_streak FROM nexus_jobs WHERE job_id = ANY($1::text[])", [j["job_id"] for j in jobs]
            )
            assert all(r["status"] not in ("completed", "failed") for r in rows)
            assert any(r["poll_streak"] > 0 for r in rows)  # failures back off
            async with http.get(f"{proxy}{P}/jobs/{jobs[0]['job_id']}", headers=headers()) as r:
                assert r.status == 200  # reading a job never depends on RAGNAROK
    finally:
        await conn.close()

    await control(http, fake_ragnarok, mode="ok")

    async def all_completed() -> bool:
        statuses = []
        for job in jobs:
            async with http.get(f"{proxy}{P}/jobs/{job['job_id']}", headers=headers()) as r:
                statuses.append((await r.json())["status"])
        return all(s == "completed" for s in statuses)

    await wait_for(all_completed)
