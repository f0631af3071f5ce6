"""The background work of a stream consumer: claim renewal, retry promotion, reclaim, upkeep.

:class:`ConsumerMaintenance` is an object of its own: the consumer creates it with everything
it needs (the client, the names, the policy, the scripts) and a few callbacks into the consumer
(what it holds, how much room it has, how to hand it a reclaimed entry, how to dead-letter one,
how to recover a lost group), starts its loops beside the read loop and closes it on stop.
No loop blocks the read loop for longer than one Redis round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import ResponseError

from montage_streams._metrics import LAG, PENDING, RECLAIMED
from montage_streams._model import DeadLetter, Delivery, delivery, group_lost, id_key, reraise_if_cancelling
from montage_streams._replies import StreamEntry, autoclaim_reply, count_reply, names_reply, pending_range_reply
from montage_streams._retry import RetryPolicy
from montage_streams._scripts import Scripts
from montage_streams._stats import group_stats

log = structlog.get_logger()


@dataclass
class ConsumerMaintenance:
    """Renewal, promotion, reclaim and upkeep of one consumer (``consumer`` in ``group`` of
    ``stream``)."""

    redis: Any  # redis-py's stubs type stream replies loosely
    stream: str
    group: str
    consumer: str
    delayed_zset: str  # the stream's delayed set (promoted back by every consumer)
    retry: RetryPolicy
    scripts: Scripts
    claim_idle_ms: int
    maxlen: int
    consumer_gc_ms: int
    interval: float  # upkeep (reclaim, trim, gauges, consumer removal) at most this far apart
    # --- callbacks into the consumer ---
    held: Callable[[], Collection[str]]  # the entry ids it holds (renewed while held)
    room: Callable[[], int]  # how many more entries it can take now
    take: Callable[[Delivery], None]  # hand it a reclaimed entry
    dead_letter: Callable[[Delivery, DeadLetter], Awaitable[None]]
    recover_group: Callable[[], Awaitable[None]]  # after NOGROUP
    stopping: Callable[[], bool]
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _claiming: set[str] = field(default_factory=set)  # reclaimed, not yet handed over (renewed)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    renewed_at: float = field(default_factory=time.monotonic)  # the renew loop's last turn (liveness)

    @property
    def labels(self) -> tuple[str, str]:
        return self.stream, self.group

    def claiming(self) -> Collection[str]:
        """Entries being reclaimed right now (the consumer must not start them twice)."""
        return self._claiming

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._renew_loop(), name="renew"),
            asyncio.create_task(self._promote_loop(), name="promote"),
            asyncio.create_task(self._upkeep_loop(), name="maintenance"),
        ]

    async def close(self) -> None:
        """End the loops (after the consumer's drain)."""
        self._closing.set()
        for t in self._tasks:
            t.cancel()
        # A cancel can be swallowed inside redis-py (Python 3.11); the loops also watch _closing.
        _, stuck = await asyncio.wait(self._tasks, timeout=5.0) if self._tasks else (set(), set())
        if stuck:
            log.warning("stream_loops_stuck", stream=self.stream, count=len(stuck))

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless closing; False once closing."""
        reraise_if_cancelling()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        return not self._closing.is_set()

    # --- claims ---------------------------------------------------------------------
    async def renew(self, ids: Sequence[str]) -> int:
        """Reset the idle time of those of ``ids`` this consumer still owns."""
        if not ids:
            return 0
        return count_reply(await self.scripts.renew(keys=[self.stream], args=[self.group, self.consumer, 0, *ids]))

    async def release(self, ids: Sequence[str]) -> int:
        """Give up entries this consumer owns but never started (read ahead): their idle time is
        set to ``claim_idle_ms`` so any live consumer's next reclaim takes them, and their
        delivery count is put back (the delivery that never ran does not count towards poison)."""
        if not ids:
            return 0
        args = [self.group, self.consumer, self.claim_idle_ms, *ids]
        return count_reply(await self.scripts.renew(keys=[self.stream], args=args))

    async def _renew_loop(self) -> None:
        interval = max(self.claim_idle_ms / 3000, 0.05)
        while await self._pause(interval):
            self.renewed_at = time.monotonic()
            ids = [*self.held(), *self._claiming]
            if ids:
                try:
                    await self.renew(ids)
                except Exception as exc:  # keep renewing whatever happens
                    reraise_if_cancelling()
                    log.warning("stream_renew_failed", stream=self.stream, error=str(exc)[:200])

    # --- retries --------------------------------------------------------------------
    async def _promote_loop(self) -> None:
        interval = min(max(min(self.retry.delays, default=1.0) / 8, 0.01), 0.5)
        while not self._closing.is_set():
            try:
                moved = await self.scripts.promote(keys=[self.delayed_zset], args=[int(time.time() * 1000), 100])
                if count_reply(moved):
                    continue
            except Exception as exc:
                reraise_if_cancelling()
                log.warning("stream_promote_failed", stream=self.stream, error=str(exc)[:200])
            await self._pause(interval)

    # --- reclaim and upkeep ---------------------------------------------------------
    async def _upkeep_loop(self) -> None:
        interval = min(self.interval, self.claim_idle_ms / 2000)
        while await self._pause(interval):
            try:
                if not self.stopping():
                    await self.reclaim()
                await self.maintain()
            except Exception as exc:  # Redis down, or a bug: log it and keep the loop alive
                reraise_if_cancelling()
                if isinstance(exc, ResponseError) and group_lost(exc):
                    with contextlib.suppress(Exception):
                        await self.recover_group()
                    continue
                log.warning("stream_maintenance_failed", error=str(exc)[:200])

    async def reclaim(self) -> int:
        """Take over entries idle longer than ``claim_idle_ms`` (their consumer is gone)."""
        taken = 0
        start = "0-0"
        for _ in range(1000):  # bounded: one pass over the pending list
            free = self.room()
            if self.stopping() or free <= 0:
                break
            reply = autoclaim_reply(
                await self.redis.xautoclaim(
                    self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=start, count=free
                )
            )
            held = set(self.held())
            claimed = [e for e in reply.entries if e.entry_id not in held and e.entry_id not in self._claiming]
            if reply.missing:  # deleted while pending: ack them (Redis 6.2 does not say which)
                await self.scripts.ack_missing(keys=[self.stream], args=[self.group, self.consumer, 1000])
            if claimed:
                taken += await self._take_over(claimed)
            if reply.done:
                break
            start = reply.next_start
        return taken

    async def _take_over(self, claimed: Sequence[StreamEntry]) -> int:
        self._claiming.update(e.entry_id for e in claimed)
        try:
            ids = sorted((e.entry_id for e in claimed), key=id_key)
            rows = pending_range_reply(
                await self.redis.xpending_range(
                    self.stream, self.group, ids[0], ids[-1], 10 * len(ids) + 100, consumername=self.consumer
                )
            )
            counts = {p.entry_id: p.deliveries for p in rows}
            taken = 0
            reclaimed = RECLAIMED.labels(*self.labels)
            for e in claimed:
                count = counts.get(e.entry_id, 2)
                reclaimed.inc()
                log.warning("stream_entry_reclaimed", entry=e.entry_id, deliveries=count)
                d = delivery(self.stream, self.group, e.entry_id, e.fields or {}, count)
                if count > self.retry.max_deliveries:
                    dead = DeadLetter("POISON", f"delivered {count} times without completing", d.attempt,
                                      [*d.history, f"attempt {d.attempt}: POISON: delivered {count} times"])  # fmt: skip
                    await self.dead_letter(d, dead)
                    continue
                if self.stopping():
                    break  # left pending: another consumer takes it
                self._claiming.discard(e.entry_id)
                self.take(d)
                taken += 1
            return taken
        finally:
            self._claiming.difference_update(e.entry_id for e in claimed)

    async def maintain(self) -> None:
        """Safe trimming, stale-consumer removal, pending and lag gauges."""
        removed = count_reply(await self.scripts.trim(keys=[self.stream], args=[self.maxlen, 10_000]))
        if removed:
            log.debug("stream_trimmed", stream=self.stream, removed=removed)
        stats = await group_stats(self.redis, self.stream, self.group)
        if stats.exists:
            PENDING.labels(*self.labels).set(stats.pending)
            LAG.labels(*self.labels).set(stats.oldest_unread_age)
        gone = await self.scripts.gc(keys=[self.stream], args=[self.group, self.consumer, self.consumer_gc_ms])
        for name in names_reply(gone):
            log.info("stream_consumer_removed", consumer=name)
