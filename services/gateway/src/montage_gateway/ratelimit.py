"""Rate limits in Redis: job creations per user (sliding window) and a general request guard.

Job creations: one sorted set per user (``keys.rate_limit(user)``), member = request id, score =
Redis server time in ms. One Lua script trims the window, counts, and records the request only
if it is under the limit, so concurrent requests can never overshoot. A creation the orchestrator
does not accept gives its slot back (:meth:`JobRateLimiter.release`).

Request guard: fixed windows counted with ``INCR`` per user and per client IP
(``keys.request_guard``), checked in one round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import structlog
from montage_common.redis import REDIS_DOWN
from montage_contracts.errors import ServiceUnavailable
from montage_contracts.keys import Keys
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from montage_gateway.errors import RequestsThrottled
from montage_gateway.metrics import RATE_LIMITED

log = structlog.get_logger()

# KEYS: zset. ARGV: window_ms, limit, member. Returns {allowed, count, ms until the oldest entry
# leaves the window} (when refused, that is the retry-after).
_SLIDING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local allowed = 0
if n < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  allowed = 1
  n = n + 1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {allowed, n, tonumber(oldest[2]) + window - now}
"""

# KEYS: zset. ARGV: window_ms. Read only: what the next acquire would see (entries newer than
# now - window). Returns {count, oldest score or -1, now_ms}.
_PEEK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = '(' .. (now - tonumber(ARGV[1]))
local n = redis.call('ZCOUNT', KEYS[1], since, '+inf')
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if n == 0 then
  return {0, -1, now}
end
return {n, tonumber(oldest[2]), now}
"""

# KEYS: counter. ARGV: window_s. Returns {count, ttl_s}.
_FIXED = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    count: int
    retry_after: int  # seconds until the oldest entry leaves the window (0 when allowed)
    reset: int = 0  # seconds until the oldest entry leaves the window (the `RateLimit` header's `t`)


@dataclass(frozen=True, slots=True)
class Window:
    """A user's window as the next creation would see it, read without taking a slot."""

    used: int
    limit: int
    window_seconds: int
    next_slot_ms: int | None  # epoch ms when the oldest counted entry leaves (None: nothing counted)
    now_ms: int  # Redis server time of the reading

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def reset(self) -> int:
        """Seconds until the oldest counted entry leaves the window (0 when nothing counts)."""
        return 0 if self.next_slot_ms is None else max(0, math.ceil((self.next_slot_ms - self.now_ms) / 1000))

    @property
    def retry_after(self) -> int:
        """Seconds until a creation would be accepted (0 while a slot is free)."""
        return 0 if self.remaining > 0 else max(1, self.reset)


def policy_header(limit: int, window_seconds: int) -> str:
    """``RateLimit-Policy`` (draft-ietf-httpapi-ratelimit-headers, structured-field form)."""
    return f'"jobs";q={limit};w={window_seconds}'


def ratelimit_headers(limit: int, window_seconds: int, remaining: int, reset: int) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` of the job-creation limit: ``r`` jobs remaining now,
    ``t`` seconds until the oldest counted job frees its slot."""
    return {
        "RateLimit-Policy": policy_header(limit, window_seconds),
        "RateLimit": f'"jobs";r={max(0, remaining)};t={max(0, reset)}',
    }


class JobRateLimiter:
    """At most ``limit`` job creations per user per sliding ``window_seconds``."""

    def __init__(self, redis: Redis, keys: Keys, *, limit: int = 5, window_seconds: int = 3600) -> None:
        self.redis = redis
        self.keys = keys
        self.limit = limit
        self.window_seconds = window_seconds
        self._script: Any = redis.register_script(_SLIDING)
        self._peek: Any = redis.register_script(_PEEK)

    async def acquire(self, user_id: str, request_id: str) -> Decision:
        try:
            allowed, count, reset_ms = await self._script(
                keys=[self.keys.rate_limit(user_id)], args=[self.window_seconds * 1000, self.limit, request_id]
            )
        except REDIS_DOWN:  # the job limit fails closed: no unlimited creations while Redis is away
            raise ServiceUnavailable("Rate limiter unavailable; retry shortly") from None
        reset = max(1, math.ceil(int(reset_ms) / 1000))
        if allowed:
            return Decision(True, int(count), 0, reset)
        RATE_LIMITED.labels("jobs").inc()
        return Decision(False, int(count), reset, reset)

    async def window(self, user_id: str) -> Window:
        """The user's current window (``GET /api/v1/usage``), by the same rule as :meth:`acquire`."""
        try:
            used, oldest, now = await self._peek(
                keys=[self.keys.rate_limit(user_id)], args=[self.window_seconds * 1000]
            )
        except REDIS_DOWN:
            raise ServiceUnavailable("Rate limiter unavailable; retry shortly") from None
        next_slot = None if int(oldest) < 0 else int(oldest) + self.window_seconds * 1000
        return Window(int(used), self.limit, self.window_seconds, next_slot, int(now))

    def headers(self, decision: Decision, *, released: bool = False) -> dict[str, str]:
        """The ``RateLimit`` headers of a creation's answer; ``released``: its slot was given back."""
        remaining = self.limit - decision.count + (1 if released and decision.allowed else 0)
        reset = 0 if remaining >= self.limit else decision.reset
        return ratelimit_headers(self.limit, self.window_seconds, remaining, reset)

    async def release(self, user_id: str, request_id: str) -> None:
        """Give a slot back (the creation was rejected or failed)."""
        await self.redis.zrem(self.keys.rate_limit(user_id), request_id)

    @property
    def window_text(self) -> str:
        if self.window_seconds % 3600 == 0:
            hours = self.window_seconds // 3600
            return "1 hour" if hours == 1 else f"{hours} hours"
        return f"{self.window_seconds} seconds"


class RequestGuard:
    """Fixed-window request counters per user and per IP; raises :class:`RequestsThrottled`."""

    def __init__(self, redis: Redis, keys: Keys, *, window_seconds: int, per_user: int, per_ip: int) -> None:
        self.redis = redis
        self.keys = keys
        self.window_seconds = window_seconds
        self.per_user = per_user
        self.per_ip = per_ip
        self._script: Any = redis.register_script(_FIXED)

    async def check(self, ip: str, user_id: str | None) -> None:
        checks: list[tuple[str, str, int]] = []
        if self.per_ip > 0:
            checks.append(("ip", self.keys.request_guard(f"ip:{ip}"), self.per_ip))
        if user_id is not None and self.per_user > 0:
            checks.append(("user", self.keys.request_guard(f"user:{user_id}"), self.per_user))
        if not checks:
            return
        try:
            if isinstance(self.redis, RedisCluster):  # no scripts in a cluster pipeline (and two slots)
                results = [await self._script(keys=[key], args=[self.window_seconds]) for _, key, _ in checks]
            else:
                pipe: Any = self.redis.pipeline(transaction=False)
                for _, key, _ in checks:
                    await self._script(keys=[key], args=[self.window_seconds], client=pipe)
                results = await pipe.execute()
        except REDIS_DOWN as exc:  # the guard fails open: an outage must not take the API down
            log.warning("request_guard_unavailable", error=type(exc).__name__)
            return
        for (kind, _, limit), (count, ttl) in zip(checks, results, strict=True):
            if int(count) > limit:
                RATE_LIMITED.labels(kind).inc()
                retry = max(1, int(ttl))
                raise RequestsThrottled(
                    extra={"retry_after": retry, "limit": limit, "window": f"{self.window_seconds} seconds"},
                    headers={"Retry-After": str(retry)},
                )
