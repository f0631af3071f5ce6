"""Provider limits shared by every worker and replica: calls in flight, and a provider's 429.

- **Slots** (``async with limits.slot("runway"):``): at most ``PROVIDER_MAX_CONCURRENCY`` calls
  in flight per provider across every process, a Redis semaphore (``keys.provider_slots``: a sorted
  set, one member per held slot scored by its lease's expiry in Redis time). One Lua script drops
  the expired leases and takes a slot only while fewer than ``N`` are held, so twenty workers never
  hold more than ``N`` between them. The holder renews its lease every third of
  ``PROVIDER_LEASE_SECONDS``; a worker that dies stops renewing and its slot frees itself when
  the lease runs out. A provider not listed is not limited (no slot is taken).
- **Backoff** (:meth:`ProviderLimits.throttled`): a 429 sets ``keys.provider_backoff`` for its
  ``Retry-After`` (only ever lengthened), and every worker waits it out before its next call to
  that provider (:meth:`ProviderLimits.before_call`), and before taking a slot: the provider's
  429 slows every worker, not only the one that got it.
- **Status** (:meth:`ProviderLimits.report`): each call's outcome, the last success and failure
  per provider, in ``keys.provider_status`` (the gateway's ``/api/v1/health`` and the operator
  console read it; nothing there calls a paid endpoint).

Metrics: ``montage_provider_in_flight{provider}`` (slots this process holds) and
``montage_provider_throttled_total{provider}`` (429s answered by the provider).

Redis unreachable while waiting for a slot: :class:`~montage_contracts.errors.RetryableError`
(no call is made without its slot; the stage is retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from montage_contracts.errors import RetryableError
from montage_contracts.keys import Keys
from montage_streams import REDIS_DOWN
from redis.asyncio import Redis

from montage_stages.runtime.metrics import PROVIDER_IN_FLIGHT, PROVIDER_THROTTLED

log = structlog.get_logger()

WAIT_SECONDS = 0.2  # how often a worker waiting for a slot asks again (with jitter)
MAX_BACKOFF_SECONDS = 300.0  # a Retry-After beyond this is capped

# KEYS: slots, backoff. ARGV: limit, token, lease_ms -> {1, 0} taken | {0, backoff_ms} | {0, -1} full
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = redis.call('PTTL', KEYS[2])
if wait > 0 then return {0, wait} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[3]))
  return {1, 0}
end
return {0, -1}
"""
# KEYS: slots. ARGV: token, lease_ms -> 1 renewed | 0 the lease had run out (re-taken regardless of the cap)
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
if alive and tonumber(alive) > now then return 1 end
return 0
"""
# KEYS: backoff. ARGV: ms, who -> the backoff's remaining ms (only ever lengthened)
_THROTTLE = """
local cur = redis.call('PTTL', KEYS[1])
if cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return tonumber(ARGV[1])
end
return cur
"""


def parse_limits(spec: str) -> dict[str, int]:
    """``"runway=5,ragnarok=10"`` -> ``{"runway": 5, "ragnarok": 10}`` (``ValueError`` on a bad entry)."""
    limits: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, sep, number = entry.partition("=")
        if not sep or not name.strip() or not number.strip().isdigit() or int(number) < 1:
            raise ValueError(f"bad entry {entry!r} (expected provider=N with N >= 1)")
        limits[name.strip()] = int(number)
    return limits


class ProviderLimits:
    """Slots, backoff and status of the providers (see the module docstring). ``redis`` ``None``:
    no shared limits (tests, the one-process pipeline): every slot is granted, a 429's backoff
    is kept in this process only."""

    def __init__(
        self, redis: Redis | None, keys: Keys, limits: dict[str, int] | None = None, lease_seconds: float = 30.0
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = dict(limits or {})
        self.lease_seconds = max(lease_seconds, 1.0)
        self._local_backoff: dict[str, float] = {}  # provider -> monotonic end (no Redis)
        self._acquire: Any = redis.register_script(_ACQUIRE) if redis is not None else None
        self._renew: Any = redis.register_script(_RENEW) if redis is not None else None
        self._throttle: Any = redis.register_script(_THROTTLE) if redis is not None else None

    @classmethod
    def unlimited(cls) -> ProviderLimits:
        return cls(None, Keys())

    # --- backoff --------------------------------------------------------------------
    async def backoff_seconds(self, provider: str) -> float:
        """How long every worker must still wait before calling ``provider`` (0: no backoff)."""
        if self.redis is None:
            return max(0.0, self._local_backoff.get(provider, 0.0) - time.monotonic())
        try:
            ms = await self.redis.pttl(self.keys.provider_backoff(provider))
        except REDIS_DOWN as exc:
            raise RetryableError(f"provider limits unreachable: {type(exc).__name__}") from None
        return max(0, int(ms)) / 1000

    async def before_call(self, provider: str) -> None:
        """Wait out ``provider``'s shared backoff (a 429 any worker got) before calling it."""
        while (wait := await self.backoff_seconds(provider)) > 0:
            log.info("provider_backoff_wait", provider=provider, seconds=round(wait, 3))
            await asyncio.sleep(wait + random.uniform(0, 0.05))

    async def throttled(self, provider: str, retry_after: float | None, *, attempt: int = 0) -> float:
        """``provider`` answered 429: every worker backs off for ``retry_after`` seconds (without
        one: 1 s doubling with ``attempt``, at most 60 s). Returns the backoff in force."""
        PROVIDER_THROTTLED.labels(provider=provider).inc()
        seconds = retry_after if retry_after is not None and retry_after > 0 else min(60.0, 2.0**attempt)
        seconds = min(seconds, MAX_BACKOFF_SECONDS)
        log.warning("provider_throttled", provider=provider, retry_after=seconds)
        if self.redis is None:
            self._local_backoff[provider] = max(self._local_backoff.get(provider, 0.0), time.monotonic() + seconds)
            return seconds
        with contextlib.suppress(*REDIS_DOWN):
            ms = await self._throttle(keys=[self.keys.provider_backoff(provider)], args=[int(seconds * 1000), "429"])
            return int(ms) / 1000
        return seconds

    # --- slots ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def slot(self, provider: str) -> AsyncIterator[None]:
        """Hold one of ``provider``'s slots for the block (waits for one, and for its backoff)."""
        limit = self.limits.get(provider, 0)
        if self.redis is None or limit <= 0:
            await self.before_call(provider)
            PROVIDER_IN_FLIGHT.labels(provider=provider).inc()
            try:
                yield
            finally:
                PROVIDER_IN_FLIGHT.labels(provider=provider).dec()
            return
        token = f"{uuid.uuid4().hex}"
        slots, backoff = self.keys.provider_slots(provider), self.keys.provider_backoff(provider)
        lease_ms = int(self.lease_seconds * 1000)
        waited = False
        while True:
            try:
                taken, wait_ms = await self._acquire(keys=[slots, backoff], args=[limit, token, lease_ms])
            except REDIS_DOWN as exc:
                raise RetryableError(f"provider limits unreachable: {type(exc).__name__}") from None
            if int(taken):
                break
            if not waited:
                waited = True
                log.info("provider_slot_wait", provider=provider, limit=limit, backoff_ms=int(wait_ms))
            pause = int(wait_ms) / 1000 if int(wait_ms) > 0 else WAIT_SECONDS
            await asyncio.sleep(pause + random.uniform(0, WAIT_SECONDS / 2))
        PROVIDER_IN_FLIGHT.labels(provider=provider).inc()
        done = asyncio.Event()
        renewing = asyncio.create_task(self._keep(slots, token, lease_ms, done), name=f"provider-slot-{provider}")
        try:
            yield
        finally:
            done.set()
            _, stuck = await asyncio.wait([renewing], timeout=5.0)
            for t in stuck:
                t.cancel()
            PROVIDER_IN_FLIGHT.labels(provider=provider).dec()
            assert self.redis is not None
            with contextlib.suppress(*REDIS_DOWN):
                await asyncio.shield(self.redis.zrem(slots, token))

    async def _keep(self, slots: str, token: str, lease_ms: int, done: asyncio.Event) -> None:
        """Renew the slot's lease every third of it until ``done`` (ends by its own event: redis-py
        may swallow a cancel that lands mid-command)."""
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), lease_ms / 3000)
            if not done.is_set():
                with contextlib.suppress(*REDIS_DOWN):
                    if not int(await self._renew(keys=[slots], args=[token, lease_ms])):
                        log.warning("provider_slot_lease_expired", slots=slots)

    async def in_flight(self, provider: str) -> int:
        """Slots held now across every worker (expired leases not counted)."""
        if self.redis is None:
            return 0
        now_ms = int(time.time() * 1000)
        return int(await self.redis.zcount(self.keys.provider_slots(provider), now_ms, "+inf"))

    # --- status -----------------------------------------------------------------------
    async def report(self, provider: str, ok: bool, detail: str = "") -> None:
        """Record a call's outcome: the provider's last success or last failure (best effort)."""
        if self.redis is None:
            return
        now = time.time()
        fields: dict[Any, Any] = {f"{provider}.last_success": f"{now:.3f}"} if ok else {
            f"{provider}.last_failure": f"{now:.3f}",
            f"{provider}.last_error": detail[:300],
        }  # fmt: skip
        with contextlib.suppress(*REDIS_DOWN):
            await self.redis.hset(self.keys.provider_status(), mapping=fields)

    async def announce(self, stage: str, provider: str, configured: bool, setting: str) -> None:
        """A worker of ``stage`` says which provider it runs and whether it is configured."""
        if self.redis is None:
            return
        value = json.dumps({"provider": provider, "configured": configured, "setting": setting, "at": time.time()})
        with contextlib.suppress(*REDIS_DOWN):
            await self.redis.hset(self.keys.provider_status(), f"stage.{stage}", value)
