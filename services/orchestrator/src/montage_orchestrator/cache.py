"""The job-status cache (30 s) that a read after a change never sees stale.

A writer puts a *tombstone* with its own token on the key inside its transaction, before the
commit, and replaces it with the new state after the commit (only if the tombstone is still
its own). Readers fill the cache only with ``SET NX``, so a reader that read the old row can
never overwrite a tombstone or newer state; while a tombstone is there readers go to the
database. A writer that dies leaves a tombstone that expires in ``TOMBSTONE_SECONDS``.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec
from montage_contracts.keys import Keys
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from montage_orchestrator.batching import Coalescer

TOMBSTONE_SECONDS = 15
_PREFIX = b"!tomb:"

# KEYS: cache key. ARGV: tombstone, value, ttl. Replace our own tombstone (or nothing / a plain value).
_REPLACE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 6) == '!tomb:' and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
"""

_encoder = msgspec.json.Encoder(decimal_format="number")


class StatusCache:
    def __init__(self, redis: Redis, keys: Keys, ttl_seconds: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl_seconds
        self._replace = redis.register_script(_REPLACE)
        # Writers handling results at once share one pipeline per turn (see ``batching``).
        self._tombs: Coalescer[tuple[str, bytes], None] = Coalescer(self._set_tombs)
        self._values: Coalescer[tuple[str, bytes, bytes], None] = Coalescer(self._replace_many)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw: Any = await self.redis.get(self.keys.job_status_cache(job_id))
        if raw is None or raw.startswith(_PREFIX):
            return None
        value: dict[str, Any] = msgspec.json.decode(raw)
        return value

    async def fill(self, job_id: str, value: dict[str, Any]) -> None:
        """A reader's fill: never replaces anything."""
        await self.redis.set(self.keys.job_status_cache(job_id), _encoder.encode(value), ex=self.ttl, nx=True)

    async def begin_write(self, job_id: str) -> bytes:
        """Call inside the writing transaction, before the commit; returns the tombstone."""
        tomb = _PREFIX + secrets.token_hex(8).encode()
        await self._tombs((self.keys.job_status_cache(job_id), tomb))
        return tomb

    async def end_write(self, job_id: str, tomb: bytes, value: dict[str, Any]) -> None:
        """Call after the commit with the committed state."""
        await self._values((self.keys.job_status_cache(job_id), tomb, _encoder.encode(value)))

    async def _set_tombs(self, items: list[tuple[str, bytes]]) -> list[None]:
        if len(items) == 1:
            await self.redis.set(items[0][0], items[0][1], ex=TOMBSTONE_SECONDS)
            return [None]
        pipe: Any = self.redis.pipeline(transaction=False)
        for key, tomb in items:
            pipe.set(key, tomb, ex=TOMBSTONE_SECONDS)
        await pipe.execute()
        return [None] * len(items)

    async def _replace_many(self, items: list[tuple[str, bytes, bytes]]) -> list[None]:
        n = len(items)
        if n > 1:
            # EVALSHA in one pipeline (a script call in a pipeline would first ask SCRIPT EXISTS);
            # an entry the server does not know the script for goes again through the script below.
            pipe: Any = self.redis.pipeline(transaction=False)
            for key, tomb, value in items:
                pipe.evalsha(self._replace.sha, 1, key, tomb, value, self.ttl)
            replies = await pipe.execute(raise_on_error=False)
            items = [item for item, r in zip(items, replies, strict=True) if isinstance(r, NoScriptError)]
            if any(isinstance(r, Exception) and not isinstance(r, NoScriptError) for r in replies):
                raise next(r for r in replies if isinstance(r, Exception) and not isinstance(r, NoScriptError))
        for key, tomb, value in items:
            await self._replace(keys=[key], args=[tomb, value, self.ttl])
        return [None] * n
