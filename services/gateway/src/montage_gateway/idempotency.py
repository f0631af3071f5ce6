"""Idempotent uploads: the ``Idempotency-Key`` header (IETF httpapi draft "The Idempotency-Key
HTTP Header Field") on ``POST /api/v1/upload-audio``.

The key is handled here, before the job-creation rate limit, so that a repeated key never takes
a slot. Per user and key (``keys.idempotency``, the key's SHA-256) Redis holds one record:

- ``pending`` while the first request runs: taken with ``SET NX`` (one request wins, whatever
  the number of gateway replicas), with a lease of the upload's time limit so a gateway that dies
  never holds a key for ever. Only this request takes a rate-limit slot and reaches the
  orchestrator.
- ``done`` once the orchestrator created the job: the first answer (status, body, content type)
  and the request's fingerprint (``montage_common.idempotency``: the song's bytes and the prompt),
  kept ``IDEMPOTENCY_TTL_SECONDS`` (24 h). Only a creation is kept: any other outcome (400, 413,
  429, 503 …) frees the key, so the client may send the same key again (e.g. after a 503's
  ``Retry-After``) and nothing was created meanwhile.

A request whose key is taken reads its own body into the fingerprint (nothing is stored), waits
for a ``pending`` record to settle (at most ``IDEMPOTENCY_WAIT_SECONDS``), then answers the first
response again with ``Idempotent-Replayed: true`` when the fingerprints match, 422 when they do
not, and 409 (``retryable``, ``Retry-After``) while the first is still running or when it created
nothing. Without Redis the key cannot be honoured: 503, like the rate limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
import structlog
from aiohttp import web
from montage_common.idempotency import FINGERPRINT_HEADER, fingerprint_upload
from montage_common.redis import REDIS_DOWN
from montage_contracts.errors import ServiceUnavailable, ValidationError
from montage_contracts.keys import Keys
from redis.asyncio import Redis

from montage_gateway.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from montage_gateway.metrics import IDEMPOTENCY
from montage_gateway.proxy import ReplyHook, UpstreamReply

log = structlog.get_logger()

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# Visible ASCII but the double quote and the backslash: a UUID, a ULID, base64 … all fit.
_KEY = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,%d}" % MAX_KEY_CHARS)  # noqa: UP031 - a regex quantifier
POLL_SECONDS = 0.1

# KEYS: record. ARGV: the value expected, the new value ('' deletes), its TTL in ms. 1 when swapped.
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """What Redis holds for one key: the first request in flight, or its answer."""

    state: Literal["pending", "done"]
    token: str = ""  # pending: which request holds the key
    fingerprint: str = ""
    status: int = 0
    body: bytes = b""
    content_type: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Record).decode

Create = Callable[[ReplyHook], Awaitable[web.StreamResponse]]


def parse_key(request: web.Request) -> str | None:
    """The request's key, or None without the header; 400 for a key that is not one.

    The draft sends it as a Structured Field string (``Idempotency-Key: "8e03…"``); the bare
    form many clients send (``Idempotency-Key: 8e03…``) is the same key.
    """
    values = request.headers.getall(HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError(f"Send one {HEADER} header, not {len(values)}")
    raw = values[0].strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    if not _KEY.fullmatch(raw):
        raise ValidationError(
            f"{HEADER} must be 1-{MAX_KEY_CHARS} visible ASCII characters without spaces, quotes or"
            " backslashes (e.g. a UUID)"
        )
    return raw


class IdempotentUploads:
    """The records of upload keys in Redis and what a request with a key gets (module docstring)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        ttl_seconds: int,
        wait_seconds: float,
        lease_seconds: float,
        max_body_bytes: int,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_seconds * 1000
        self.wait_seconds = wait_seconds
        self.lease_ms = max(1, math.ceil(lease_seconds * 1000))
        self.max_body_bytes = max_body_bytes
        self._swap_script: Any = redis.register_script(_SWAP)

    async def upload(self, request: web.Request, user_id: str, key: str, create: Create) -> web.StreamResponse:
        """Answer an upload carrying ``key``: run ``create`` for the first request, replay for the rest."""
        name = self.keys.idempotency(user_id, hashlib.sha256(key.encode()).hexdigest())
        pending = _encode(Record("pending", token=uuid.uuid4().hex))
        for _ in range(3):  # the record may vanish between SET NX and GET (the first one failed)
            try:
                if await self.redis.set(name, pending, px=self.lease_ms, nx=True):
                    IDEMPOTENCY.labels("first").inc()
                    return await self._first(name, pending, create)
                current = await self.redis.get(name)
            except REDIS_DOWN:
                raise ServiceUnavailable(f"{HEADER} cannot be honoured right now; retry shortly") from None
            if current is not None:
                return await self._repeat(request, name, _decode(current))
        IDEMPOTENCY.labels("in_use").inc()
        raise IdempotencyKeyInUse()

    async def _swap(self, name: str, expected: bytes, new: bytes, ttl_ms: int) -> bool:
        return bool(await self._swap_script(keys=[name], args=[expected, new, ttl_ms]))

    async def _first(self, name: str, pending: bytes, create: Create) -> web.StreamResponse:
        kept = False

        async def keep(reply: UpstreamReply) -> None:
            nonlocal kept
            fingerprint = reply.headers.get(FINGERPRINT_HEADER, "")
            if not (200 <= reply.status < 300 and fingerprint):
                return  # nothing was created: the key is freed below
            done = Record(
                "done", fingerprint=fingerprint, status=reply.status, body=reply.body, content_type=reply.content_type
            )
            try:
                kept = await self._swap(name, pending, _encode(done), self.ttl_ms)
            except REDIS_DOWN as exc:  # the job exists; only a later repeat of the key is at risk
                log.warning("idempotency_record_failed", error=type(exc).__name__)

        try:
            return await create(keep)
        finally:
            if not kept:
                try:
                    await asyncio.shield(self._swap(name, pending, b"", 0))
                except Exception as exc:  # the lease ends it anyway
                    log.warning("idempotency_release_failed", error=type(exc).__name__)

    async def _repeat(self, request: web.Request, name: str, record: Record) -> web.StreamResponse:
        fingerprint = await fingerprint_upload(request, self.max_body_bytes)
        polls = max(1, math.ceil(self.wait_seconds / POLL_SECONDS))
        for _ in range(polls):
            if record.state == "done":
                break
            await asyncio.sleep(POLL_SECONDS)
            try:
                raw = await self.redis.get(name)
            except REDIS_DOWN:
                raise ServiceUnavailable(f"{HEADER} cannot be honoured right now; retry shortly") from None
            if raw is None:
                IDEMPOTENCY.labels("in_use").inc()
                raise IdempotencyKeyInUse(f"The first request with this {HEADER} created nothing; send it again")
            record = _decode(raw)
        if record.state != "done":
            IDEMPOTENCY.labels("in_use").inc()
            raise IdempotencyKeyInUse()
        if record.fingerprint != fingerprint:
            IDEMPOTENCY.labels("reused").inc()
            raise IdempotencyKeyReused(
                f"This {HEADER} was used for a different upload (another audio_file or user_prompt); use a new key"
            )
        IDEMPOTENCY.labels("replayed").inc()
        resp = web.Response(status=record.status, body=record.body)
        if record.content_type:
            resp.headers["Content-Type"] = record.content_type
        resp.headers[REPLAYED_HEADER] = "true"
        return resp
