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
from montage_common.keys import Keys
from redis.asyncio import Redis

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
        await self.redis.set(self.keys.job_status_cache(job_id), tomb, ex=TOMBSTONE_SECONDS)
        return tomb

    async def end_write(self, job_id: str, tomb: bytes, value: dict[str, Any]) -> None:
        """Call after the commit with the committed state."""
        await self._replace(keys=[self.keys.job_status_cache(job_id)], args=[tomb, _encoder.encode(value), self.ttl])
