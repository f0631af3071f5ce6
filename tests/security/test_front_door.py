"""Attacks on the front door, sent from outside to the real gateway in front of the real services.

Each attack asserts the status, the error body, and that nothing was created or left behind: no
job, no rate-limit slot taken, no stored upload. Requests whose bytes matter (dot segments,
oversized lines, odd headers) are written to the socket as they are, so no client library
normalises them first. Where a test looks behind the gateway (Redis counters, the storage
directory, the internal services' own ports) it says so.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from montage_common.redis import create_redis
from montage_contracts.keys import Keys

from tests.e2e.flows import PROMPT, FinishedJob
from tests.stack import RunningStack, dev_token, unique
from tests.support import raw_http, raw_request

pytestmark = pytest.mark.asyncio


def multipart(fields: list[tuple[str, str, bytes, str | None]]) -> tuple[bytes, str]:
    """A multipart/form-data body: (name, filename or "", bytes, content type)."""
    boundary = f"----montage{uuid.uuid4().hex}"
    out = b""
    for name, filename, data, ctype in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def upload_body(song: bytes, prompt: str = PROMPT, filename: str = "song.mp3") -> tuple[bytes, str]:
    return multipart([("audio_file", filename, song, "audio/mpeg"), ("user_prompt", "", prompt.encode(), None)])


def header_only_wav(seconds: float = 10.0, rate: int = 44100) -> bytes:
    """A WAV header that claims ``seconds`` of 16-bit stereo audio and holds no samples."""
    data = int(seconds * rate * 4)
    return (
        b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, rate, rate * 4, 4, 16)
        + b"data" + struct.pack("<I", data)
    )  # fmt: skip


class Victim:
    """One attacking user: a token, and what it owns behind the gateway."""

    def __init__(self, stack: RunningStack, user: str, token: str) -> None:
        self.stack = stack
        self.user = user
        self.token = token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def jobs_total(self) -> int:
        async with aiohttp.ClientSession() as s, s.get(f"{self.stack.url}/api/v1/jobs", headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return int((await r.json())["total"])

    async def rate_slots_used(self) -> int:
        """Looks behind the gateway: the user's job-creation window in Redis."""
        redis = create_redis(self.stack.redis_url)
        try:
            return int(await redis.zcard(Keys(self.stack.namespace).rate_limit(self.user)))
        finally:
            await redis.aclose()

    def stored_uploads(self) -> list[Path]:
        """Looks behind the gateway: the user's files in the local storage backend."""
        root = self.stack.storage_dir / "audio-uploads" / self.user
        return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []

    async def assert_nothing_created(self) -> None:
        assert await self.jobs_total() == 0
        assert await self.rate_slots_used() == 0
        assert self.stored_uploads() == []


@pytest.fixture
async def attacker(e2e_stack: RunningStack) -> Victim:
    user = unique("mallory")
    async with aiohttp.ClientSession() as session:
        token = await dev_token(session, e2e_stack.url, user)
    return Victim(e2e_stack, user, token)


def error_body(body: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(body)
    assert {"error", "code", "retryable", "job_id"} <= decoded.keys(), decoded
    return decoded


# --- 1. paths that another hop could resolve differently ---------------------------------
DOT_SEGMENTS = [
    "%2e%2e", "%2E%2E", ".%2e", "%2e.", "..", "%252e%252e", "%25252e%25252e",
    "%c0%ae%c0%ae", "%e0%80%ae%e0%80%ae", "%ef%bc%8e%ef%bc%8e", "%u002e%u002e",
]  # fmt: skip


@pytest.mark.parametrize("dots", DOT_SEGMENTS)
async def test_upload_through_dot_segments_is_refused_and_creates_nothing(
    attacker: Victim, song: Path, dots: str
) -> None:
    body, ctype = upload_body(song.read_bytes())
    path = f"/api/v1/x/{dots}/upload-audio"
    status, headers, answer = await raw_http(
        attacker.stack.url, raw_request("POST", path, {**attacker.auth, "Content-Type": ctype}, body)
    )
    assert status in (400, 404), (path, status, answer[:200])  # never forwarded, never a job
    assert error_body(answer)["code"] in ("VALIDATION_ERROR", "NOT_FOUND")
    assert headers["x-request-id"]
    await attacker.assert_nothing_created()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/x/%2e%2e/%2e%2e/internal/health",
        "/api/v1/jobs/%2e%2e/%2e%2e/%2e%2e/internal/health",
        "/api/nexus/ragnarok/x/%2e%2e/%2e%2e/%2e%2e/internal/health",
        "/api/v1/%2e%2e/%2e%2e/metrics",
        "/api/v1/%2e%2e/%2e%2e/readyz",
        "/api/nexus/ragnarok/%2e%2e/%2e%2e/%2e%2e/metrics",
        "/api/v1/x\\..\\..\\internal/health",
        "/api/v1/x/..%2f..%2finternal/health",
        "/api/v1/x/..%5c..%5cinternal/health",
        "/api/v1/jobs/%00/cancel",
    ],
)
async def test_internal_and_operational_endpoints_are_not_reachable_by_traversal(attacker: Victim, path: str) -> None:
    status, _, answer = await raw_http(attacker.stack.url, raw_request("GET", path, attacker.auth))
    assert status == 400, (path, status, answer[:300])
    assert error_body(answer)["code"] == "VALIDATION_ERROR"
    assert b"queue" not in answer and b"montage_" not in answer  # no health report, no metrics


@pytest.mark.parametrize("path", ["/internal/health", "/metrics", "/readyz", "/healthz", "/api/v1/internal/health"])
async def test_the_gateway_api_port_serves_no_internal_or_operational_route(attacker: Victim, path: str) -> None:
    status, headers, answer = await raw_http(attacker.stack.url, raw_request("GET", path, attacker.auth))
    assert status == 404
    assert error_body(answer)["code"] == "NOT_FOUND" and headers["server"] == "montage"


async def test_internal_services_refuse_requests_without_the_gateway_credential(e2e_stack: RunningStack) -> None:
    """Looks behind the gateway: the internal services' own API and ops ports."""
    stack = e2e_stack.stack
    orchestrator = f"http://127.0.0.1:{stack.orchestrator_port}"
    proxy = f"http://127.0.0.1:{stack.proxy_port}"
    forged = {"X-Montage-User-Id": "victim"}
    async with aiohttp.ClientSession() as s:
        for base, path in [
            (orchestrator, "/api/v1/jobs"),
            (orchestrator, "/internal/health"),
            (orchestrator, "/api/v1/jobs/00000000-0000-0000-0000-000000000000"),
            (proxy, "/api/nexus/ragnarok/jobs/job_x"),
        ]:
            for extra in ({}, {"X-Montage-Internal": "guess"}):
                async with s.get(f"{base}{path}", headers={**forged, **extra}) as r:
                    assert r.status == 401, (base, path, extra, await r.text())
                    assert (await r.json())["code"] == "UNAUTHORIZED"
        for api, ops in [
            (e2e_stack.url, stack.gateway_ops_port),
            (orchestrator, stack.orchestrator_ops_port),
            (proxy, stack.proxy_ops_port),
        ]:
            for path in ("/metrics", "/healthz", "/readyz"):
                async with s.get(f"{api}{path}") as r:
                    assert r.status == 404, (api, path)
                async with s.get(f"http://127.0.0.1:{ops}{path}") as r:
                    assert r.status == 200, (ops, path, await r.text())


# --- 3. bad input: a 400 with the error body, never a 500, nothing left behind -----------
async def test_nul_in_the_prompt_is_400_and_leaves_nothing(attacker: Victim, song: Path) -> None:
    body, ctype = upload_body(song.read_bytes(), prompt=PROMPT + "\x00 hidden")
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{attacker.stack.url}/api/v1/upload-audio", data=body, headers={**attacker.auth, "Content-Type": ctype}
        ) as r,
    ):
        assert r.status == 400, await r.text()
        assert (await r.json())["code"] == "VALIDATION_ERROR"
    await attacker.assert_nothing_created()


async def test_multipart_without_boundary_is_400(attacker: Victim, song: Path) -> None:
    body, _ = upload_body(song.read_bytes())
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{attacker.stack.url}/api/v1/upload-audio",
            data=body,
            headers={**attacker.auth, "Content-Type": "multipart/form-data"},
        ) as r,
    ):
        assert r.status == 400, await r.text()
        assert (await r.json())["code"] == "VALIDATION_ERROR"
    await attacker.assert_nothing_created()


async def test_header_only_wav_is_refused_before_it_takes_a_slot(attacker: Victim) -> None:
    body, ctype = multipart(
        [("audio_file", "x.wav", header_only_wav(), "audio/wav"), ("user_prompt", "", PROMPT.encode(), None)]
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{attacker.stack.url}/api/v1/upload-audio", data=body, headers={**attacker.auth, "Content-Type": ctype}
        ) as r,
    ):
        assert r.status == 400, await r.text()
        assert (await r.json())["code"] == "VALIDATION_ERROR"
    await attacker.assert_nothing_created()


@pytest.mark.parametrize("sig", ["%C3%A9%C3%A9", "%F0%9F%98%80" * 8, "zz" * 32, "%00"])
async def test_malformed_signature_on_files_is_400_without_auth(e2e_stack: RunningStack, sig: str) -> None:
    path = f"/files/video-outputs/u/j/final_video.mp4?expires=9999999999&sig={sig}"
    status, _, answer = await raw_http(e2e_stack.url, raw_request("GET", path))
    assert status == 400, answer[:200]
    assert error_body(answer)["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("header", "12345678901234567890123-0"),  # a 23-digit part: more than 64 bits
        ("header", "1-99999999999999999999"),  # 20 digits, over 2^64 - 1
        ("header", "١٢٣-٠"),  # Arabic-Indic digits: str.isdigit() says yes, Redis says no
        ("query", "١٢٣-٠"),
        ("query", "18446744073709551616-0"),
        ("query", "1-2-3"),
    ],
)
async def test_a_last_event_id_redis_would_refuse_is_400(
    e2e_stack: RunningStack, finished_job: FinishedJob, where: str, value: str
) -> None:
    async with aiohttp.ClientSession() as s:
        token = await dev_token(s, e2e_stack.url, finished_job.user)
    path = f"/api/v1/jobs/{finished_job.job_id}/stream"
    headers = {"Authorization": f"Bearer {token}"}
    if where == "header":
        headers["Last-Event-ID"] = value
    else:
        path += "?last_event_id=" + "".join(f"%{b:02X}" for b in value.encode())
    status, _, answer = await raw_http(e2e_stack.url, raw_request("GET", path, headers))
    assert status == 400, answer[:300]
    assert error_body(answer)["code"] == "VALIDATION_ERROR"


# --- 4./5. wrong answers ---------------------------------------------------------------
async def test_a_slow_client_body_is_408_and_frees_its_slot(attacker: Victim, song: Path) -> None:
    """The client sends half its upload and stalls past the gateway's upload timeout (8 s here)."""
    body, ctype = upload_body(song.read_bytes())
    host, port = "127.0.0.1", int(attacker.stack.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = raw_request("POST", "/api/v1/upload-audio", {**attacker.auth, "Content-Type": ctype})
        head = head.replace(b"\r\n\r\n", f"\r\nContent-Length: {len(body)}\r\n\r\n".encode(), 1)
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 60)  # liveness guard only; the gateway answers at 8 s
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1])
    assert status == 408, raw[:300]
    assert error_body(raw.partition(b"\r\n\r\n")[2])["code"] == "VALIDATION_ERROR"
    await attacker.assert_nothing_created()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (raw_request("GET", "/api/v1/jobs?" + "ECHO" * 2500), 414),
        (raw_request("GET", "/api/v1/jobs", {"X-Attack": "ECHO" * 5000}), 431),
        (b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nBad Header ECHO\r\n\r\n", 400),
    ],
)
async def test_oversized_or_malformed_requests_get_the_error_body_without_echo(
    e2e_stack: RunningStack, request_bytes: bytes, status: int
) -> None:
    got, headers, answer = await raw_http(e2e_stack.url, request_bytes)
    assert got == status
    assert headers["x-request-id"] and headers["server"] == "montage"
    assert b"ECHO" not in answer and "aiohttp" not in headers.get("server", "")
    assert error_body(answer)["code"] == "VALIDATION_ERROR"
    log = (e2e_stack.stack.log_dir / "gateway.log").read_text()
    assert "Traceback" not in log


async def test_health_is_not_counted_by_the_per_ip_guard(e2e_stack: RunningStack) -> None:
    """Looks behind the gateway: the per-IP request counter in Redis."""
    key = Keys(e2e_stack.namespace).request_guard("ip:127.0.0.1")
    redis = create_redis(e2e_stack.redis_url)
    try:
        before = int(await redis.get(key) or 0)
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.get(f"{e2e_stack.url}/api/v1/health") as r:
                    assert r.status in (200, 503)
            after_health = int(await redis.get(key) or 0)
            async with s.get(f"{e2e_stack.url}/api/v1/nope") as r:
                assert r.status == 404
        after_other = int(await redis.get(key) or 0)
    finally:
        await redis.aclose()
    assert after_health == before
    assert after_other == after_health + 1  # the guard itself still counts other requests


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/api/v1/health", "GET, HEAD"),
        ("PUT", "/api/v1/dev/token", "POST"),
        ("DELETE", "/api/v1/jobs", "GET, HEAD"),  # GET routes answer HEAD too (montage_common.routing)
        ("PUT", "/api/v1/upload-audio", "POST"),
    ],
)
async def test_wrong_methods_are_405_with_allow_and_need_no_token(
    e2e_stack: RunningStack, method: str, path: str, allow: str
) -> None:
    status, headers, answer = await raw_http(e2e_stack.url, raw_request(method, path))
    assert status == 405, answer[:200]
    assert headers["allow"] == allow
    assert error_body(answer)["code"] == "METHOD_NOT_ALLOWED"


async def test_unknown_routes_are_404_without_a_token_and_the_server_is_not_named(e2e_stack: RunningStack) -> None:
    for path in ("/api/v1/nope", "/api/v1/jobs/x/y/z", "/api/nexus/ragnarok/other", "/admin"):
        status, headers, answer = await raw_http(e2e_stack.url, raw_request("GET", path))
        assert status == 404, (path, answer[:200])
        assert error_body(answer)["code"] == "NOT_FOUND"
        assert headers["server"] == "montage"


# --- 6. one status per cause: too large is 413, whatever the size and whoever notices -----
MAX_UPLOAD = 10 * 1024 * 1024  # the orchestrator's MAX_UPLOAD_BYTES (default)
MAX_BODY = 11 * 1024 * 1024  # the gateway's MAX_BODY_BYTES (default)


async def _send_streaming(url: str, head: bytes, chunks: list[bytes]) -> tuple[int, bytes]:
    """Write ``head``, then the body chunk by chunk while reading the answer: a server that
    answers before the body is through (and stops reading) is still heard."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))

    async def pump() -> None:
        try:
            writer.write(head)
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass  # the server answered and closed: what some of these cases expect

    sending = asyncio.create_task(pump())
    try:
        raw = await asyncio.wait_for(reader.read(), 60)  # liveness guard only
    finally:
        sending.cancel()
        writer.close()
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), body


def _chunked(body: bytes, size: int = 256 * 1024) -> list[bytes]:
    parts = [
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n" for i in range(0, len(body), size)
    ]
    return [*parts, b"0\r\n\r\n"]


@pytest.mark.parametrize(
    ("file_bytes", "framing"),
    [
        (MAX_UPLOAD + 1, "length"),  # under the gateway's limit: the orchestrator notices while streaming
        (MAX_UPLOAD + 1, "chunked"),
        (MAX_BODY + 1, "length"),  # the gateway refuses it by its Content-Length, unread
        (MAX_BODY + 1, "chunked"),  # no Content-Length: whoever counts past its limit first
    ],
)
async def test_a_too_large_upload_is_413_whatever_its_size(attacker: Victim, file_bytes: int, framing: str) -> None:
    body, ctype = upload_body(b"\xff\xfb" + b"\x00" * (file_bytes - 2))
    headers = {**attacker.auth, "Content-Type": ctype}
    if framing == "length":
        headers["Content-Length"] = str(len(body))
        chunks = [body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)]
    else:
        headers["Transfer-Encoding"] = "chunked"
        chunks = _chunked(body)
    status, answer = await _send_streaming(
        attacker.stack.url, raw_request("POST", "/api/v1/upload-audio", headers), chunks
    )
    assert status == 413, answer[:300]
    assert error_body(answer)["code"] == "VALIDATION_ERROR"
    await attacker.assert_nothing_created()
