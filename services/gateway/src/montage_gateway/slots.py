"""SSE connection caps shared by all gateway replicas: per job and per user.

Each open connection holds a lease in two sorted sets (``keys.sse_job_connections(job)`` and
``keys.sse_user_connections(user)``), member = connection id, score = lease expiry (ms). One Lua
script per set drops expired leases, counts and adds atomically. The owning process refreshes
its leases in one pipeline per interval; a crashed replica's leases expire on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from montage_common.redis import REDIS_DOWN
from montage_contracts.keys import Keys
from redis.asyncio import Redis

from montage_gateway.errors import TooManyConnections
from montage_gateway.metrics import SSE_REFUSED

log = structlog.get_logger()

# KEYS: zset. ARGV: now_ms, lease_ms, limit, member. Returns 1 if the lease was taken.
_ACQUIRE = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    job_key: str
    user_key: str


class ConnectionSlots:
    def __init__(
        self, redis: Redis, keys: Keys, *, per_job: int, per_user: int, lease_seconds: float, refresh_seconds: float
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.per_job = per_job
        self.per_user = per_user
        self.lease_ms = int(lease_seconds * 1000)
        self.refresh_seconds = refresh_seconds
        self._script: Any = redis.register_script(_ACQUIRE)
        self._live: dict[str, Lease] = {}

    async def _take(self, key: str, limit: int, member: str) -> bool:
        now = int(time.time() * 1000)
        return bool(await self._script(keys=[key], args=[now, self.lease_ms, limit, member]))

    async def acquire(self, job_id: str | None, user_id: str) -> Lease:
        """A job stream's lease (its job's and its user's slot), or with ``job_id`` None a user
        stream's (its user's slot only)."""
        job_key = "" if job_id is None else self.keys.sse_job_connections(job_id)
        lease = Lease(uuid.uuid4().hex, job_key, self.keys.sse_user_connections(user_id))
        if lease.job_key and not await self._take(lease.job_key, self.per_job, lease.id):
            SSE_REFUSED.labels("job").inc()
            raise TooManyConnections(f"Too many connections for this job (max {self.per_job})", job_id=job_id)
        try:
            user_ok = await self._take(lease.user_key, self.per_user, lease.id)
        except BaseException:
            if lease.job_key:
                await self.redis.zrem(lease.job_key, lease.id)
            raise
        if not user_ok:
            if lease.job_key:
                await self.redis.zrem(lease.job_key, lease.id)
            SSE_REFUSED.labels("user").inc()
            raise TooManyConnections(f"Too many open streams for this user (max {self.per_user})", job_id=job_id)
        self._live[lease.id] = lease
        return lease

    async def release(self, lease: Lease) -> None:
        """Free the slots; if Redis is unreachable the lease simply expires (it is no longer refreshed)."""
        self._live.pop(lease.id, None)
        pipe: Any = self.redis.pipeline(transaction=False)
        if lease.job_key:
            pipe.zrem(lease.job_key, lease.id)
        pipe.zrem(lease.user_key, lease.id)
        try:
            await pipe.execute()
        except REDIS_DOWN as exc:
            log.warning("sse_lease_release_failed", error=type(exc).__name__)

    async def refresh_forever(self, stop: asyncio.Event) -> None:
        """Extend every local lease each ``refresh_seconds`` (run as a task) until ``stop`` (its own
        signal: redis-py may swallow a cancel that lands mid-command)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.refresh_seconds)
            if stop.is_set():
                return
            try:
                await self.refresh()
            except Exception as exc:  # Redis down: leases keep their expiry; retried next round
                log.warning("sse_lease_refresh_failed", error=type(exc).__name__)

    async def refresh(self) -> None:
        leases = list(self._live.values())
        expiry = int(time.time() * 1000) + self.lease_ms
        for start in range(0, len(leases), 1000):
            pipe: Any = self.redis.pipeline(transaction=False)
            for lease in leases[start : start + 1000]:
                if lease.job_key:
                    pipe.zadd(lease.job_key, {lease.id: expiry}, xx=True)
                    pipe.pexpire(lease.job_key, self.lease_ms)
                pipe.zadd(lease.user_key, {lease.id: expiry}, xx=True)
                pipe.pexpire(lease.user_key, self.lease_ms)
            await pipe.execute()
