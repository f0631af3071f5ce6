"""OpenAPI route coverage, CORS, health, signed files, development routes."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from montage_common.storage import sign
from montage_contracts.keys import Keys
from montage_gateway.app import create_app
from montage_gateway.openapi import document
from montage_gateway.settings import DEV_JWT_SECRET, GatewaySettings
from montage_gateway.tokens import TokenVerifier

from tests.gateway.conftest import Gateways, Orchestrator, bearer
from tests.support import ops_server

OPS_ROUTES = {"/healthz", "/readyz", "/metrics"}  # operational, not part of the public API


def _norm(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


@pytest.mark.parametrize("environment", ["development", "production"])
def test_every_route_is_documented_and_every_documented_path_served(environment: str) -> None:
    settings = GatewaySettings(environment=environment, supabase_jwt_secret="x" * 40)  # type: ignore[arg-type]
    app = create_app(settings)
    registered: set[tuple[str, str]] = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource else ""
        if canonical in OPS_ROUTES or route.method == "HEAD" or route.method == "*":
            continue
        registered.add((route.method.lower(), _norm(canonical)))
    doc = document(development=environment == "development")
    documented = {(m, _norm(p)) for p, ops in doc["paths"].items() for m in ops}
    assert registered - documented == set(), "routes missing from openapi.json"
    assert documented - registered == set(), "documented but not served"
    assert doc["openapi"].startswith("3.1")


async def test_openapi_and_docs_are_served_without_auth(gw: Any) -> None:
    resp = await gw.get("/api/v1/openapi.json")
    assert resp.status == 200
    assert "/api/v1/jobs/{job_id}/stream" in (await resp.json())["paths"]
    page = await gw.get("/api/v1/docs")
    assert page.status == 200 and "stream-ticket" in await page.text()


async def test_cors_preflight_without_auth(gw: Any) -> None:
    resp = await gw.options(
        "/api/v1/upload-audio",
        headers={
            "Origin": "http://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status == 204
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == "http://app.example.com"
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Max-Age"] == "3600"
    assert set(h["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {"GET", "POST", "OPTIONS"}
    assert {"authorization", "content-type"} <= set(
        h["Access-Control-Allow-Headers"].lower().replace(" ", "").split(",")
    )


async def test_cors_headers_on_responses_and_unknown_origins(gw: Any) -> None:
    ok = await gw.get("/api/v1/jobs", headers={**bearer("cors"), "Origin": "http://app.example.com"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://app.example.com"
    err = await gw.get("/api/v1/jobs", headers={"Origin": "http://app.example.com"})
    assert err.status == 401 and err.headers["Access-Control-Allow-Origin"] == "http://app.example.com"
    evil = await gw.options(
        "/api/v1/jobs", headers={"Origin": "http://evil.example.com", "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in evil.headers


async def test_health_healthy_and_unhealthy(gw: Any, orchestrator: Orchestrator) -> None:
    resp = await gw.get("/api/v1/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy" and body["database"] == "connected" and body["redis"] == "connected"
    assert body["queue"] == {"size": 0, "active_jobs": 0, "workers": 6, "stages": {}}
    assert body["timestamp"].endswith("Z")
    orchestrator.fake.health = {
        "database": "failed",
        "redis": "connected",
        "queue": {"size": 0, "active_jobs": 0, "workers": 0, "stages": {}},
        "issues": ["database connection failed"],
    }
    resp = await gw.get("/api/v1/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unhealthy" and body["issues"] == ["database connection failed"]


async def test_health_when_orchestrator_is_down(gateways: Gateways) -> None:
    gw = await gateways.start(orchestrator_url="http://127.0.0.1:9")
    resp = await gw.get("/api/v1/health")
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert "orchestrator unreachable" in (await resp.json())["issues"]


async def test_health_when_redis_is_down(gateways: Gateways) -> None:
    gw = await gateways.start(redis_url="redis://127.0.0.1:9/0")
    resp = await gw.get("/api/v1/health")
    assert resp.status == 503
    assert "redis connection failed" in (await resp.json())["issues"]


async def test_signed_files_with_range(gateways: Gateways, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    (storage / "video-outputs" / "j1").mkdir(parents=True)
    data = bytes(range(256)) * 40
    (storage / "video-outputs" / "j1" / "final_video.mp4").write_bytes(data)
    gw = await gateways.start(storage_dir=str(storage), storage_signing_key="k")
    key = "video-outputs/j1/final_video.mp4"
    expires = int(time.time()) + 60
    url = f"/files/{key}?expires={expires}&sig={sign('k', key, expires)}"
    resp = await gw.get(url)
    assert resp.status == 200 and await resp.read() == data and resp.headers["Content-Type"] == "video/mp4"
    part = await gw.get(url, headers={"Range": "bytes=100-199"})
    assert part.status == 206 and await part.read() == data[100:200]
    assert (await gw.get(f"/files/{key}?expires={expires}&sig={'0' * 64}")).status == 403
    assert (await gw.get(f"/files/{key}?expires={expires}&sig=bad")).status == 400  # not even hex
    assert (await gw.get(f"/files/{key}?expires={expires}&sig=%C3%A9%C3%A9")).status == 400
    past = int(time.time()) - 1
    assert (await gw.get(f"/files/{key}?expires={past}&sig={sign('k', key, past)}")).status == 403
    missing = "video-outputs/j1/nope.mp4"
    assert (await gw.get(f"/files/{missing}?expires={expires}&sig={sign('k', missing, expires)}")).status == 404


async def test_dev_token_in_development_only(gateways: Gateways) -> None:
    dev = await gateways.start()
    resp = await dev.post("/api/v1/dev/token", json={"user_id": "dev-user"})
    assert resp.status == 200
    tok = (await resp.json())["access_token"]
    assert (await TokenVerifier(hs_secret=DEV_JWT_SECRET).verify(tok)).user_id == "dev-user"
    assert (await dev.get("/api/v1/jobs", headers={"Authorization": f"Bearer {tok}"})).status == 200
    assert (await dev.get("/demo")).status in (200, 404)
    prod = await gateways.start(environment="production", supabase_jwt_secret="p" * 40)
    assert (await prod.post("/api/v1/dev/token", json={"user_id": "x"})).status in (401, 404)
    assert (await prod.get("/demo")).status == 404
    # the dev default secret is not accepted in production
    assert (await prod.get("/api/v1/jobs", headers={"Authorization": f"Bearer {tok}"})).status == 401


async def test_metrics_exposed_on_the_ops_port_only(gw: Any) -> None:
    await gw.get("/api/v1/jobs")
    assert (await gw.get("/metrics")).status == 404
    async with ops_server(gw.server.app) as ops, aiohttp.ClientSession() as http, http.get(f"{ops}/metrics") as r:
        text = await r.text()
    assert "montage_gateway_auth_failures_total" in text
    assert 'montage_http_requests_total{method="GET",route="/api/v1/jobs",service="gateway",status="401"}' in text


async def test_health_reports_each_stages_provider(gw: Any, redis: Any, keys: Keys) -> None:
    """What the stage workers announce and record of their calls (montage_stages' ProviderLimits,
    the same Redis hash), read back by the gateway: no provider is called for it."""
    from montage_stages.runtime.provider_limits import ProviderLimits

    limits = ProviderLimits(redis, keys)
    await limits.announce("video_generator", "runway", True, "VIDEO_PROVIDER, RUNWAY_API_KEY")
    await limits.announce("reference_generator", "openai-images", False, "IMAGE_PROVIDER_URL")
    await limits.announce("composer", "local", True, "")
    await limits.announce("scene_planner", "openai-chat", True, "LLM_URL")
    body = await (await gw.get("/api/v1/health")).json()
    states = {p["stage"]: (p["provider"], p["state"]) for p in body["providers"]}
    assert states == {
        "scene_planner": ("openai-chat", "ready"),
        "reference_generator": ("openai-images", "unconfigured"),
        "video_generator": ("runway", "ready"),
        "composer": ("local", "local"),
    }
    await limits.report("runway", True)
    await limits.report("openai-chat", False, "Runway answered 500")
    body = await (await gw.get("/api/v1/health")).json()
    by_stage = {p["stage"]: p for p in body["providers"]}
    assert by_stage["video_generator"]["state"] == "answering" and by_stage["video_generator"]["last_success"]
    failing = by_stage["scene_planner"]
    assert failing["state"] == "failing" and failing["last_error"] == "Runway answered 500"
    await limits.report("runway", False, "Runway task t1 failed (INTERNAL)")
    body = await (await gw.get("/api/v1/health")).json()
    assert {p["stage"]: p["state"] for p in body["providers"]}["video_generator"] == "failing"
