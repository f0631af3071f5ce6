"""The background work of a stream consumer: claim renewal, retry promotion, reclaim, upkeep.

:class:`ConsumerMaintenance` is a mixin of :class:`~montage_streams.StreamConsumer`;
it runs beside the read loop and never blocks it for longer than one Redis round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import ResponseError

from montage_streams._metrics import LAG, PENDING, RECLAIMED
from montage_streams._model import (
    DeadLetter,
    Delivery,
    KeyLayout,
    group_lost,
    id_key,
    reraise_if_cancelling,
    text,
)
from montage_streams._retry import RetryPolicy
from montage_streams._scripts import Scripts
from montage_streams._stats import group_stats

log = structlog.get_logger()


class ConsumerMaintenance:
    """Renewal, promotion, reclaim and maintenance loops over the consumer's state."""

    # Provided by StreamConsumer.
    _r: Any
    stream: str
    group: str
    consumer: str
    keys: KeyLayout
    concurrency: int
    claim_idle_ms: int
    retry: RetryPolicy
    maxlen: int
    consumer_gc_ms: int
    maintenance_interval: float
    _stop: asyncio.Event
    _closing: asyncio.Event
    _slots: asyncio.Semaphore
    _inflight: dict[str, asyncio.Task[None]]
    _claimed: set[str]
    _labels: tuple[str, str]
    _scripts: Scripts

    if TYPE_CHECKING:

        def _start(self, entry_id: str, fields: dict[bytes, bytes], delivery_count: int) -> None: ...
        def _delivery(self, entry_id: str, fields: dict[bytes, bytes], delivery_count: int) -> Delivery: ...
        async def _dead_letter(self, d: Delivery, dead: DeadLetter) -> None: ...
        async def _recreate_group_safely(self) -> None: ...

    async def _renew_loop(self) -> None:
        interval = max(self.claim_idle_ms / 3000, 0.05)
        while await self._pause(interval):
            ids = [*self._inflight, *self._claimed]
            if ids:
                try:
                    await self._scripts.renew(keys=[self.stream], args=[self.group, self.consumer, *ids])
                except Exception as exc:  # keep renewing whatever happens
                    reraise_if_cancelling()
                    log.warning("stream_renew_failed", stream=self.stream, error=str(exc)[:200])

    async def _promote_loop(self) -> None:
        interval = min(max(min(self.retry.delays, default=1.0) / 8, 0.01), 0.5)
        while not self._closing.is_set():
            try:
                moved = await self._scripts.promote(
                    keys=[self.keys.delayed_zset(self.stream)], args=[int(time.time() * 1000), 100]
                )
                if moved:
                    continue
            except Exception as exc:
                reraise_if_cancelling()
                log.warning("stream_promote_failed", stream=self.stream, error=str(exc)[:200])
            await self._pause(interval)

    async def _maintenance_loop(self) -> None:
        interval = min(self.maintenance_interval, self.claim_idle_ms / 2000)
        while await self._pause(interval):
            try:
                if not self._stop.is_set():
                    await self.reclaim()
                await self.maintain()
            except Exception as exc:  # Redis down, or a bug: log it and keep the loop alive
                reraise_if_cancelling()
                if isinstance(exc, ResponseError) and group_lost(exc):
                    await self._recreate_group_safely()
                    continue
                log.warning("stream_maintenance_failed", error=str(exc)[:200])

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless closing; False once closing."""
        reraise_if_cancelling()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        return not self._closing.is_set()

    async def reclaim(self) -> int:
        """Take over entries idle longer than ``claim_idle_ms`` (their consumer is gone)."""
        taken = 0
        start = "0-0"
        for _ in range(1000):  # bounded: one pass over the pending list
            free = self.concurrency - len(self._inflight) - len(self._claimed)
            if self._stop.is_set() or free <= 0:
                break
            resp = await self._r.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=start, count=free
            )
            next_start = text(resp[0])
            claimed: list[tuple[str, dict[bytes, bytes]]] = []
            missing = False
            for raw_id, fields in resp[1]:
                if raw_id is None or not fields:  # deleted while pending (Redis 6.2 hides the id)
                    missing = True
                    continue
                eid = text(raw_id)
                if eid not in self._inflight and eid not in self._claimed:
                    claimed.append((eid, fields))
            if missing:
                await self._scripts.ack_missing(keys=[self.stream], args=[self.group, self.consumer, 1000])
            if claimed:
                taken += await self._take_over(claimed)
            if next_start == "0-0":
                break
            start = next_start
        return taken

    async def _take_over(self, claimed: Sequence[tuple[str, dict[bytes, bytes]]]) -> int:
        self._claimed.update(eid for eid, _ in claimed)
        try:
            ids = sorted((eid for eid, _ in claimed), key=id_key)
            info = await self._r.xpending_range(
                self.stream, self.group, ids[0], ids[-1], 10 * len(ids) + 100, consumername=self.consumer
            )
            counts = {text(p["message_id"]): int(p["times_delivered"]) for p in info}
            taken = 0
            for eid, fields in claimed:
                count = counts.get(eid, 2)
                RECLAIMED.labels(*self._labels).inc()
                log.warning("stream_entry_reclaimed", entry=eid, deliveries=count)
                d = self._delivery(eid, fields, count)
                if count > self.retry.max_deliveries:
                    dead = DeadLetter("POISON", f"delivered {count} times without completing", d.attempt,
                                      [*d.history, f"attempt {d.attempt}: POISON: delivered {count} times"])  # fmt: skip
                    await self._dead_letter(d, dead)
                    continue
                await self._slots.acquire()
                if self._stop.is_set():
                    self._slots.release()
                    break  # left pending: another consumer takes it
                self._claimed.discard(eid)
                self._start(eid, fields, delivery_count=count)
                taken += 1
            return taken
        finally:
            self._claimed.difference_update(eid for eid, _ in claimed)

    async def maintain(self) -> None:
        """Safe trimming, stale-consumer removal, pending and lag gauges."""
        removed = await self._scripts.trim(keys=[self.stream], args=[self.maxlen, 10_000])
        if removed:
            log.debug("stream_trimmed", stream=self.stream, removed=int(removed))
        stats = await group_stats(self._r, self.stream, self.group)
        if stats.exists:
            PENDING.labels(*self._labels).set(stats.pending)
            LAG.labels(*self._labels).set(stats.oldest_unread_age)
        for name in await self._scripts.gc(keys=[self.stream], args=[self.group, self.consumer, self.consumer_gc_ms]):
            log.info("stream_consumer_removed", consumer=text(name))
