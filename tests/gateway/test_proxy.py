"""Forwarding: status and body pass-through, identity headers, 503/504, streamed 10 MB upload."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from tests.gateway.conftest import Gateways, Orchestrator, bearer
from tests.gateway.fake_orchestrator import SECRET


async def test_status_body_and_headers_pass_through(gw: Any) -> None:
    resp = await gw.get("/api/v1/jobs/teapot", headers=bearer("amy"))
    assert resp.status == 418
    assert await resp.text() == "short and stout"
    assert resp.headers["X-Custom"] == "kept"
    assert resp.headers["X-Request-ID"]


async def test_403_and_404_pass_through(gw: Any, orchestrator: Orchestrator) -> None:
    job = orchestrator.fake.add_job("owner")
    resp = await gw.get(f"/api/v1/jobs/{job}", headers=bearer("intruder"))
    assert resp.status == 403
    assert (await resp.json())["code"] == "FORBIDDEN"
    resp = await gw.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000", headers=bearer("owner"))
    assert resp.status == 404
    resp = await gw.get(f"/api/v1/jobs/{job}", headers=bearer("owner"))
    assert resp.status == 200 and (await resp.json())["job_id"] == job


async def test_identity_headers_are_set_by_the_gateway_only(gw: Any) -> None:
    headers = {
        **bearer("real-user"),
        "X-Montage-User-Id": "someone-else",
        "X-Montage-Internal": "guess",
        "X-Request-ID": "req-12345678",
    }
    resp = await gw.post("/api/v1/jobs/echo/cancel?a=1&b=2", headers=headers, data=b"x")
    body = await resp.json()
    assert body["user"] == "real-user"
    assert body["headers"]["x-montage-internal"] == SECRET
    assert body["headers"]["x-montage-user-id"] == "real-user"
    assert "authorization" not in body["headers"]  # the JWT stays at the edge
    assert body["request_id"] == "req-12345678" == resp.headers["X-Request-ID"]
    assert body["query"] == "a=1&b=2"


async def test_nexus_routes_go_to_ragnarok_proxy(gw: Any) -> None:
    resp = await gw.get("/api/nexus/ragnarok/jobs/job_abc", headers=bearer("nina"))
    assert resp.status == 200
    assert (await resp.json())["user"] == "nina"


async def test_unreachable_upstream_is_503(gateways: Gateways) -> None:
    gw = await gateways.start(orchestrator_url="http://127.0.0.1:9")
    resp = await gw.get("/api/v1/jobs", headers=bearer("amy"))
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert body["code"] == "SERVICE_UNAVAILABLE" and body["retryable"] is True


async def test_slow_upstream_is_504(gateways: Gateways, orchestrator: Orchestrator) -> None:
    orchestrator.fake.slow_seconds = 30
    gw = await gateways.start(upstream_timeout_seconds=0.3)
    resp = await gw.get("/api/v1/jobs/slow", headers=bearer("amy"))
    assert resp.status == 504
    assert (await resp.json())["code"] == "TIMEOUT"


async def test_10mb_upload_is_streamed(gw: Any, orchestrator: Orchestrator) -> None:
    """The orchestrator sees the first megabyte before the client has sent the rest."""
    size = 10 * 1024 * 1024
    block = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            if sent == 2 * 1024 * 1024:
                await asyncio.wait_for(orchestrator.fake.upload_progress.wait(), 30)
            digest.update(block)
            sent += len(block)
            yield block

    resp = await gw.post(
        "/api/v1/upload-audio",
        data=body(),
        headers={**bearer("streamer"), "Content-Type": "application/octet-stream", "Content-Length": str(size)},
    )
    assert resp.status == 201, await resp.text()
    (upload,) = orchestrator.fake.uploads
    assert upload.size == size and upload.sha256 == digest.hexdigest()


async def test_body_over_the_limit_is_413(gateways: Gateways) -> None:
    gw = await gateways.start(max_body_bytes=1024)
    resp = await gw.post("/api/v1/upload-audio", data=b"x" * 4096, headers=bearer("amy"))
    assert resp.status == 413
