"""``Idempotency-Key`` on uploads, below the gateway's routes: the key's syntax, the fingerprint the
gateway and the orchestrator must agree on, and the Redis records under concurrency (real Redis).

The end-to-end behaviour through the whole stack (one job, one stored file, one rate-limit slot
for ten concurrent uploads) is ``tests/e2e/test_idempotency.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, FormData, web
from aiohttp.test_utils import TestServer
from montage_common.idempotency import FINGERPRINT_HEADER, fingerprint_upload
from montage_common.web import error_response
from montage_contracts.errors import MontageError
from montage_contracts.keys import Keys
from montage_gateway.idempotency import REPLAYED_HEADER, IdempotentUploads, parse_key
from montage_gateway.proxy import ReplyHook, UpstreamReply
from montage_orchestrator import upload
from redis.asyncio import Redis

PROMPT = "a slow cinematic journey through neon rain, city lights and long shadows at night"
SONG = b"ID3" + bytes(range(256)) * 40


def form(song: bytes = SONG, prompt: str = PROMPT, webhook_url: str | None = None) -> FormData:
    """The upload's parts; each FormData picks a new random boundary, as a browser does."""
    data = FormData()
    data.add_field("user_prompt", prompt)
    data.add_field("audio_file", song, filename="song.mp3", content_type="audio/mpeg")
    if webhook_url is not None:
        data.add_field("webhook_url", webhook_url)
    return data


# --- the key's syntax ------------------------------------------------------------------------
def _request_with(values: list[str]) -> Any:
    class Headers:
        def getall(self, name: str, default: list[str]) -> list[str]:
            assert name == "Idempotency-Key"
            return values or default

    class Request:
        headers = Headers()

    return Request()


@pytest.mark.parametrize(
    ("sent", "key"),
    [
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),  # sf-string
        ("a", "a"),
        ("k" * 255, "k" * 255),
        ("01HZX3+/=_~:.", "01HZX3+/=_~:."),
    ],
)
def test_valid_keys(sent: str, key: str) -> None:
    assert parse_key(_request_with([sent])) == key


@pytest.mark.parametrize(
    "sent",
    ["", '""', "k" * 256, "two words", "tab\there", "caf\u00e9", 'a"b', "back\\slash", '"unclosed', "\x00"],
)
def test_bad_keys_are_400(sent: str) -> None:
    with pytest.raises(MontageError) as info:
        parse_key(_request_with([sent]))
    assert info.value.status == 400 and info.value.code == "VALIDATION_ERROR"


def test_no_key_and_two_keys() -> None:
    assert parse_key(_request_with([])) is None
    with pytest.raises(MontageError) as info:
        parse_key(_request_with(["a", "b"]))
    assert info.value.status == 400


# --- one fingerprint for the gateway and the orchestrator --------------------------------------
@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in reversed(servers):
        await server.close()


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except MontageError as err:
        return error_response(err)


async def test_gateway_and_orchestrator_fingerprints_agree(
    serve: Callable[[web.Application], Awaitable[str]], tmp_path: Path
) -> None:
    """The same parts give the same fingerprint whatever the boundary, on both sides; another song
    or prompt gives another."""

    async def gateway_side(request: web.Request) -> web.Response:
        return web.json_response({"fp": await fingerprint_upload(request, 1 << 20)})

    async def orchestrator_side(request: web.Request) -> web.Response:
        received = await upload.receive(request, 1 << 20, str(tmp_path))
        received.discard()
        return web.json_response({"fp": received.fingerprint})

    app = web.Application(middlewares=[_errors])
    app.router.add_post("/gw", gateway_side)
    app.router.add_post("/orch", orchestrator_side)
    base = await serve(app)

    async def fp(path: str, data: FormData) -> str:
        async with ClientSession() as s, s.post(base + path, data=data) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["fp"])

    same = {
        await fp("/gw", form()),
        await fp("/orch", form()),
        await fp("/gw", form()),
    }
    assert len(same) == 1
    (base_fp,) = same
    assert await fp("/orch", form(prompt=PROMPT + "!")) != base_fp
    assert await fp("/gw", form(prompt=PROMPT + "!")) == await fp("/orch", form(prompt=PROMPT + "!"))
    assert await fp("/gw", form(song=SONG + b"\x00")) != base_fp
    assert await fp("/orch", form(song=SONG + b"\x00")) == await fp("/gw", form(song=SONG + b"\x00"))
    # a webhook URL is part of the request: another one is another request (422 for a reused key)
    hooked = await fp("/gw", form(webhook_url="https://a.example/hook"))
    assert hooked != base_fp and hooked == await fp("/orch", form(webhook_url="https://a.example/hook"))
    assert await fp("/orch", form(webhook_url="https://b.example/hook")) != hooked


# --- the records in Redis ----------------------------------------------------------------------
class Creator:
    """What stands behind the key here: counts creations, answers ``status``, may be held."""

    def __init__(self, status: int = 201) -> None:
        self.status = status
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def create(self, request: web.Request, keep: ReplyHook) -> web.StreamResponse:
        self.calls += 1
        fp = await fingerprint_upload(request, 1 << 20)  # what the orchestrator computes
        self.entered.set()
        await self.gate.wait()
        body = json.dumps({"job_id": str(uuid.uuid4()), "status": "queued"}).encode()
        headers = {FINGERPRINT_HEADER: fp} if self.status == 201 else {}
        await keep(UpstreamReply(self.status, body, "application/json", headers))
        return web.Response(status=self.status, body=body, content_type="application/json")


async def _app(serve: Callable[[web.Application], Awaitable[str]], uploads: IdempotentUploads, creator: Creator) -> str:
    async def handler(request: web.Request) -> web.StreamResponse:
        key = parse_key(request)
        assert key is not None
        return await uploads.upload(request, "ursula", key, lambda keep: creator.create(request, keep))

    app = web.Application(middlewares=[_errors])
    app.router.add_post("/upload", handler)
    return await serve(app) + "/upload"


def _uploads(redis: Redis, keys: Keys, wait: float = 10.0) -> IdempotentUploads:
    return IdempotentUploads(redis, keys, ttl_seconds=3600, wait_seconds=wait, lease_seconds=30, max_body_bytes=1 << 20)


async def _post(url: str, key: str, data: FormData) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with ClientSession() as s, s.post(url, data=data, headers={"Idempotency-Key": key}) as r:
        return r.status, await r.json(), dict(r.headers)


async def test_ten_concurrent_repeats_create_once(
    serve: Callable[[web.Application], Awaitable[str]], redis: Redis, keys: Keys
) -> None:
    creator = Creator()
    creator.gate.clear()  # the first stays in flight until every repeat has arrived
    url = await _app(serve, _uploads(redis, keys), creator)
    key = str(uuid.uuid4())
    first = asyncio.create_task(_post(url, key, form()))
    await asyncio.wait_for(creator.entered.wait(), 10)
    repeats = [asyncio.create_task(_post(url, key, form())) for _ in range(9)]
    await asyncio.sleep(0.3)  # let the repeats reach the record (they wait on it)
    creator.gate.set()
    results = [await first, *await asyncio.gather(*repeats)]
    assert creator.calls == 1
    assert {status for status, _, _ in results} == {201}
    assert len({body["job_id"] for _, body, _ in results}) == 1
    assert sum(h.get(REPLAYED_HEADER) == "true" for _, _, h in results) == 9
    # later, sequentially: the same answer again; another prompt under the key: 422
    status, body, headers = await _post(url, key, form())
    assert (status, body["job_id"], headers.get(REPLAYED_HEADER)) == (201, results[0][1]["job_id"], "true")
    status, body, _ = await _post(url, key, form(prompt=PROMPT + " and rain"))
    assert status == 422 and body["code"] == "IDEMPOTENCY_KEY_REUSED" and body["retryable"] is False
    status, body, _ = await _post(url, key, form(song=SONG[:-1]))
    assert status == 422
    assert creator.calls == 1
    # the key is the user's: the record expires with the configured TTL
    ttl = await redis.pttl(keys.idempotency("ursula", hashlib.sha256(key.encode()).hexdigest()))
    assert 0 < ttl <= 3600 * 1000


async def test_a_failed_first_request_frees_the_key(
    serve: Callable[[web.Application], Awaitable[str]], redis: Redis, keys: Keys
) -> None:
    creator = Creator(status=503)
    url = await _app(serve, _uploads(redis, keys), creator)
    key = str(uuid.uuid4())
    status, _, _ = await _post(url, key, form())
    assert status == 503
    creator.status = 201
    status, _, headers = await _post(url, key, form(prompt=PROMPT + " (a different one is fine now)"))
    assert status == 201 and REPLAYED_HEADER not in headers
    assert creator.calls == 2


async def test_a_repeat_that_outwaits_the_first_gets_409(
    serve: Callable[[web.Application], Awaitable[str]], redis: Redis, keys: Keys
) -> None:
    creator = Creator()
    creator.gate.clear()
    url = await _app(serve, _uploads(redis, keys, wait=0.3), creator)
    key = str(uuid.uuid4())
    first = asyncio.create_task(_post(url, key, form()))
    await asyncio.wait_for(creator.entered.wait(), 10)
    status, body, headers = await _post(url, key, form())
    assert status == 409 and body["code"] == "IDEMPOTENCY_KEY_IN_USE" and body["retryable"] is True
    assert headers["Retry-After"] == "1"
    creator.gate.set()
    assert (await first)[0] == 201
    assert creator.calls == 1
