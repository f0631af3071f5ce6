"""Only the gateway may call the proxy, and users only see their own jobs."""

from __future__ import annotations

import aiohttp
import pytest

from .conftest import headers, unique

P = "/api/nexus/ragnarok"


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"X-Montage-User-Id": "user-1"},
        headers(secret="wrong-secret"),
        {"X-Montage-Internal": headers()["X-Montage-Internal"]},  # secret but no user
    ],
    ids=["none", "user-only", "wrong-secret", "no-user"],
)
async def test_requests_without_valid_internal_credentials_are_401(
    http: aiohttp.ClientSession, proxy: str, given: dict[str, str]
) -> None:
    calls = [
        ("POST", f"{P}/direct/submit?business_name=Test"),
        ("POST", f"{P}/generate/enriched"),
        ("GET", f"{P}/jobs/job_123"),
    ]
    for method, path in calls:
        async with http.request(method, f"{proxy}{path}", json={"company_name": "X"}, headers=given) as r:
            assert r.status == 401, (method, path)
            body = await r.json()
            assert body["code"] == "UNAUTHORIZED"


async def test_other_users_job_is_403_and_unknown_is_404(http: aiohttp.ClientSession, proxy: str) -> None:
    async with http.post(
        f"{proxy}{P}/direct/submit", params={"business_name": unique("Mine")}, headers=headers("alice")
    ) as r:
        assert r.status == 202
        job_id = (await r.json())["job_id"]
    async with http.get(f"{proxy}{P}/jobs/{job_id}", headers=headers("alice")) as r:
        assert r.status == 200
    async with http.get(f"{proxy}{P}/jobs/{job_id}", headers=headers("mallory")) as r:
        assert r.status == 403
        body = await r.json()
        assert body["code"] == "FORBIDDEN"
        assert "workflow_id" not in body
    async with http.get(f"{proxy}{P}/jobs/job_doesnotexist", headers=headers("alice")) as r:
        assert r.status == 404
        assert (await r.json())["code"] == "NOT_FOUND"


async def test_local_input_validation(http: aiohttp.ClientSession, proxy: str) -> None:
    async with http.post(f"{proxy}{P}/direct/submit", headers=headers()) as r:
        assert r.status == 400
        assert "business_name" in (await r.json())["error"]
    async with http.post(f"{proxy}{P}/generate/enriched", json={"industry": "x"}, headers=headers()) as r:
        assert r.status == 400
        assert "company_name" in (await r.json())["error"]
    async with http.post(f"{proxy}{P}/generate/enriched", data=b"[1, 2", headers=headers()) as r:
        assert r.status == 400
