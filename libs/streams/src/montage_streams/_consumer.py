"""Reliable consumer groups over Redis Streams: the engine of the pipeline.

One :class:`StreamConsumer` reads one stream in one consumer group and runs a handler per
entry with bounded concurrency. Its guarantees:

- **Atomic hand-off.** A handler returns the entries it wants to emit (the next stage's task,
  a result, an event); they are written and the source entry is acknowledged in *one* Lua
  script, and only while this consumer still owns the entry. A crash before the script
  leaves the entry pending (another consumer reclaims it); a crash after it leaves nothing
  to redo. A consumer that lost its claim discards its result instead of duplicating it.
  Hand-offs of entries that finish together go to Redis in one script call (each one still
  checked and applied on its own).
- **Live claims are kept.** While a handler runs, its entries' idle time is reset every
  ``claim_idle / 3``, so no other consumer reclaims a long job of a live worker.
- **Dead consumers' entries are reclaimed** with ``XAUTOCLAIM`` after ``claim_idle``; entries
  delivered more than ``retry.max_deliveries`` times (a message that kills its worker) are
  dead-lettered. Consumers gone for ``consumer_gc`` with nothing pending are removed.
- **Durable retries.** An exception with ``retryable = True`` (Montage's ``RetryableError``) moves the entry, atomically with its ack, into a sorted set scored by
  its due time (its :class:`RetryPolicy`: 2 s, 4 s, 8 s by default, one delay per retry, so
  1 + ``len(delays)`` attempts); every consumer promotes due entries back to their stream. After the last retry,
  or on a non-retryable error, the entry goes to the dead-letter stream ``<stream>:dead``
  with its error and history, and the caller's ``on_dead_letter`` hook emits what it wants
  (e.g. a failure result) in the same script.
- **Recovers from a lost group** (``NOGROUP`` after FLUSHALL or a restart without
  persistence): the group is recreated from the last id this consumer saw, so a surviving
  stream is not replayed. Connection errors back off and retry forever.
- **Safe trimming.** Streams are trimmed to about ``maxlen`` with ``XTRIM MINID ~`` but never
  past the oldest entry that some group still has pending or has not yet read (decided and
  applied in one script).
- **Graceful stop.** :meth:`StreamConsumer.stop` stops reading; in-flight handlers get
  ``grace`` seconds, then are cancelled and their entries stay pending for another consumer.

All keys one script touches share a hash tag (the caller's :class:`KeyLayout` decides the
names), so this also runs on Redis Cluster. Works with Redis 6.2+. The package knows nothing
of Montage's pipeline: it depends on redis, msgspec, structlog and prometheus-client only.

Layout: this module holds the consumer's lifecycle, reading and hand-off;
:mod:`._maintenance` its background loops (renewal, promotion, reclaim, trimming);
:mod:`._scripts` the Lua scripts; :mod:`._model` the entry types and the key layout;
:mod:`._metrics` the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from montage_streams._maintenance import ConsumerMaintenance
from montage_streams._metrics import DEAD, DURATION, FAILED, LOST, PROCESSED, RETRIED
from montage_streams._model import (
    REDIS_DOWN,
    DeadLetter,
    DeadLetterHook,
    Delivery,
    Emit,
    Handler,
    HandOffError,
    KeyLayout,
    delivery,
    group_lost,
    id_key,
    text,
)
from montage_streams._retry import RetryPolicy
from montage_streams._scripts import Scripts, batch_args, entry_fields, netstrings

log = structlog.get_logger()

_HANDOFF_CALLS = 2  # hand-off script calls in flight per consumer


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamProducer:
    """Adds entries to streams, several at once atomically."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._ack_emit = Scripts(redis).ack_emit

    async def emit(self, emits: Sequence[Emit]) -> list[str]:
        if not emits:
            return []
        # The first emitted stream stands in as the (unused) source key: no foreign slot.
        keys, argv = batch_args(emits[0].stream, [("", emits)])
        res = await self._ack_emit(keys=keys, args=["", "", *argv])
        return [text(i) for i in res[0]]


@dataclass
class StreamConsumer(ConsumerMaintenance):
    """Consume ``stream`` in ``group``; see the module docstring for the guarantees."""

    redis: Redis
    stream: str
    group: str
    handler: Handler
    keys: KeyLayout
    consumer: str = field(default_factory=default_consumer_name)
    concurrency: int = 3
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # every retry rule (delays, poison, timeout)
    maxlen: int = 100_000
    consumer_gc_ms: int = 3_600_000
    grace: float = 20.0
    maintenance_interval: float = 5.0
    on_dead_letter: DeadLetterHook | None = None

    def __post_init__(self) -> None:
        self._r: Any = self.redis  # redis-py's stubs type stream replies loosely
        self._stop = asyncio.Event()
        self._closing = asyncio.Event()  # background loops end (after the drain)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._claimed: set[str] = set()  # reclaimed, waiting for a slot (renewed meanwhile)
        self._last_seen = "0-0"
        self._scripts = Scripts(self.redis)
        self._dead_stream = self.keys.dead_letter_stream(self.stream)
        self._labels = (self.stream, self.group)
        self._processed = PROCESSED.labels(*self._labels)
        self._failed = FAILED.labels(*self._labels)
        self._duration = DURATION.labels(*self._labels)
        self._commits: list[tuple[str, Sequence[Emit], asyncio.Future[tuple[bool, Delivery | None]]]] = []
        self._flushers: set[asyncio.Task[None]] = set()  # hand-off calls in flight (at most _HANDOFF_CALLS)
        self._flush_due = False  # a flusher is created and has not taken its batch yet
        self.started = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading; :meth:`run` returns after in-flight work finished or was cancelled."""
        self._stop.set()

    async def run(self) -> None:
        await self._retrying(self.ensure_group)
        loops = [
            asyncio.create_task(self._renew_loop(), name="renew"),
            asyncio.create_task(self._promote_loop(), name="promote"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance"),
        ]
        self.started.set()
        try:
            await self._read_loop()
        finally:
            await self._drain()
            self._closing.set()
            for t in loops:
                t.cancel()
            # A cancel can be swallowed inside redis-py (Python 3.11); the loops also watch _closing.
            _, stuck = await asyncio.wait(loops, timeout=5.0)
            if stuck:
                log.warning("stream_loops_stuck", stream=self.stream, count=len(stuck))

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while self._inflight and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(list(self._inflight.values()), timeout=left)
        pending = list(self._inflight.values())
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)  # bounded: a handler may ignore its cancel
            log.warning("stream_handlers_cancelled", stream=self.stream, count=len(pending))
        if self._flushers:
            await asyncio.wait(list(self._flushers), timeout=5.0)

    async def ensure_group(self, start_id: str = "0") -> None:
        try:
            await self._r.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
            log.info("stream_group_created", stream=self.stream, group=self.group, start=start_id)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _recreate_group(self) -> None:
        log.warning("stream_group_lost", stream=self.stream, group=self.group, resume_after=self._last_seen)
        await self.ensure_group(self._last_seen)

    async def _retrying(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run a Redis operation until it succeeds or we stop (Redis down, group lost)."""
        delay = 0.1
        while True:
            try:
                return await fn()
            except ResponseError as exc:
                if not group_lost(exc):
                    raise
                await self._recreate_group_safely()
            except REDIS_DOWN as exc:
                if self._stop.is_set():
                    raise
                log.warning("stream_redis_unavailable", stream=self.stream, error=str(exc)[:200])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _recreate_group_safely(self) -> None:
        with contextlib.suppress(*REDIS_DOWN):
            await self._recreate_group()

    # --- reading --------------------------------------------------------------------
    async def _read_loop(self) -> None:
        # Our own pending entries first (a restart under the same consumer name), then new ones.
        cursor = "0-0"
        while True:
            if not await self._acquire_unless_stopped():
                return
            free = 1
            while free < self.concurrency and not self._slots.locked():
                await self._slots.acquire()
                free += 1
            try:
                entries = await self._read(cursor, free)
            except REDIS_DOWN as exc:
                self._release(free)
                log.warning("stream_redis_unavailable", stream=self.stream, error=str(exc)[:200])
                await self._sleep_unless_stopped(0.5)
                continue
            except ResponseError as exc:
                self._release(free)
                if not group_lost(exc):
                    raise
                await self._recreate_group_safely()
                cursor = ">"  # the old pending list went with the group
                continue
            history = cursor != ">"
            if history:
                cursor = entries[-1][0] if entries else ">"
            for entry_id, fields in entries:
                if entry_id in self._inflight:  # already running (reclaimed meanwhile)
                    continue
                free -= 1
                if fields is None:  # deleted or trimmed while pending
                    await self._ack_only(entry_id)
                    self._slots.release()
                    continue
                self._start(entry_id, fields, delivery_count=2 if history else 1)
            self._release(free)

    async def _acquire_unless_stopped(self) -> bool:
        """Take a slot; False (and no slot) once stopping, even while every slot is busy."""
        if not self._slots.locked():
            await self._slots.acquire()
        else:
            acquire = asyncio.ensure_future(self._slots.acquire())
            stopping = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([acquire, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not acquire.done():
                acquire.cancel()
                await asyncio.wait([acquire])
            if acquire.cancelled() or acquire.exception() is not None:
                return False
        if self._stop.is_set():
            self._slots.release()
            return False
        return True

    async def _read(self, cursor: str, count: int) -> list[tuple[str, dict[bytes, bytes] | None]]:
        block = None if cursor != ">" else self.block_ms
        resp = await self._r.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count, block=block)
        out: list[tuple[str, dict[bytes, bytes] | None]] = []
        for _stream, items in resp or []:
            for entry_id, fields in items:
                eid = text(entry_id)
                out.append((eid, fields or None))
        if out:
            self._note_seen(out[-1][0])
        return out

    def _note_seen(self, entry_id: str) -> None:
        if id_key(entry_id) > id_key(self._last_seen):
            self._last_seen = entry_id

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _delivery(self, entry_id: str, fields: dict[bytes, bytes], delivery_count: int) -> Delivery:
        return delivery(self.stream, self.group, entry_id, fields, delivery_count)

    def _start(self, entry_id: str, fields: dict[bytes, bytes], delivery_count: int) -> None:
        """Run the handler of an entry; the caller holds a slot, released when the task ends.

        The task keeps its slot for the entries its hand-off fetches (see :meth:`_flush`).
        """
        current = [entry_id]
        task = asyncio.create_task(self._run(self._delivery(entry_id, fields, delivery_count), current))
        self._inflight[entry_id] = task

        def done(_t: asyncio.Task[None]) -> None:
            self._inflight.pop(current[0], None)
            self._slots.release()

        task.add_done_callback(done)

    async def _run(self, d: Delivery, current: list[str]) -> None:
        task = asyncio.current_task()
        assert task is not None
        for _ in range(10_000):  # then the slot goes back to the read loop for fairness
            nxt = await self._handle(d)
            if nxt is None:
                return
            self._inflight.pop(d.entry_id, None)
            self._inflight[nxt.entry_id] = task
            current[0] = nxt.entry_id
            d = nxt

    # --- handling -------------------------------------------------------------------
    async def _handle(self, d: Delivery) -> Delivery | None:
        """Run one entry to its outcome; returns the next entry if its hand-off fetched one."""
        start = time.perf_counter()
        structlog.contextvars.bind_contextvars(stream=self.stream, entry=d.entry_id, attempt=d.attempt)  # task-local
        limit = self.retry.handler_timeout
        deadline = None if limit is None else asyncio.timeout(limit)
        try:
            if deadline is None:
                emits = await self.handler(d)
            else:
                async with deadline:
                    emits = await self.handler(d)
        except asyncio.CancelledError:
            raise  # shutdown: leave the entry pending for another consumer
        except Exception as exc:
            self._duration.observe(time.perf_counter() - start)
            self._failed.inc()
            await self._fail(d, exc, timed_out=deadline is not None and deadline.expired())
            return None
        self._duration.observe(time.perf_counter() - start)
        try:
            ok, nxt = await self._commit(d.entry_id, emits)
        except ResponseError as exc:  # e.g. an emit to a key of the wrong type
            self._failed.inc()
            await self._fail(d, HandOffError(str(exc)))
            return None
        if ok:
            self._processed.inc()
        else:
            LOST.labels(*self._labels).inc()
            log.warning("stream_claim_lost", message_id=d.message_id)
        return nxt

    async def _commit(self, entry_id: str, emits: Sequence[Emit]) -> tuple[bool, Delivery | None]:
        """Queue one hand-off; those queued in the same loop turn go in one call.

        Up to ``_HANDOFF_CALLS`` calls are in flight at once: a hand-off does not wait for the
        round trip of an earlier batch (that wait was most of a hop's latency under load), and
        hand-offs queued while every call is in flight go together in the next one.
        """
        fut: asyncio.Future[tuple[bool, Delivery | None]] = asyncio.get_running_loop().create_future()
        self._commits.append((entry_id, emits, fut))
        if not self._flush_due and len(self._flushers) < _HANDOFF_CALLS:
            self._flush_due = True
            task = asyncio.create_task(self._flush(), name="hand-off")
            self._flushers.add(task)
            task.add_done_callback(self._flusher_done)
        return await fut

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        self._flushers.discard(task)
        if task.cancelled():
            self._flush_due = False  # it may have ended before taking its batch

    async def _flush(self) -> None:
        """Send queued hand-offs in one script call that also fetches an entry per freed slot."""
        try:
            await self._flush_queued()
        finally:
            # In the same step as the last look at the queue: a hand-off queued from now on
            # sees a free call and starts its own flusher.
            self._flushers.discard(asyncio.current_task())

    async def _flush_queued(self) -> None:
        while self._commits:
            self._flush_due = False
            batch, self._commits = self._commits, []
            fetch = 0 if self._stop.is_set() else sum(not f.done() for _, _, f in batch)
            fetched: list[tuple[str, dict[bytes, bytes]]] = []
            results: list[bool | BaseException]
            try:
                results, fetched = await self._retrying(functools.partial(self._ack_batch, batch, fetch))
            except ResponseError as exc:
                # One bad hand-off (e.g. a wrong-type key) must not fail the others with it.
                results = [exc] if len(batch) == 1 else [await self._commit_one(one) for one in batch]
            except BaseException as exc:  # stopping while Redis is down, or cancelled
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, _, fut), res in zip(batch, results, strict=True):
                if fut.done():  # its handler was cancelled meanwhile
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                    continue
                nxt = None
                if fetched:
                    eid, fields = fetched.pop(0)
                    nxt = self._delivery(eid, fields, 1)
                fut.set_result((res, nxt))
            for eid, fields in fetched:  # nobody left to take it (rare): run it if a slot is free
                if self._slots.locked() or self._stop.is_set():
                    break  # stays pending; reclaimed after claim_idle
                await self._slots.acquire()
                self._start(eid, fields, 1)

    async def _commit_one(self, one: tuple[str, Sequence[Emit], Any]) -> bool | BaseException:
        try:
            oks, _ = await self._retrying(functools.partial(self._ack_batch, [one], 0))
        except Exception as exc:
            return exc
        ok: bool = oks[0]
        return ok

    async def _ack_batch(
        self, batch: Sequence[tuple[str, Sequence[Emit], Any]], fetch: int = 0
    ) -> tuple[list[bool], list[tuple[str, dict[bytes, bytes]]]]:
        keys, argv = batch_args(self.stream, [(entry_id, emits) for entry_id, emits, _ in batch], fetch)
        res = await self._scripts.ack_emit(keys=keys, args=[self.group, self.consumer, *argv])
        oks = [r is not None for r in res[: len(batch)]]
        fetched: list[tuple[str, dict[bytes, bytes]]] = []
        if len(res) > len(batch) and res[-1]:
            for raw_id, flat in res[-1][0][1]:
                fetched.append((text(raw_id), dict(zip(flat[::2], flat[1::2], strict=True))))
            self._note_seen(fetched[-1][0])
        return oks, fetched

    async def _ack_with(self, entry_id: str, emits: Sequence[Emit]) -> bool:
        return (await self._ack_batch([(entry_id, emits, None)]))[0][0]

    async def _ack_only(self, entry_id: str) -> None:
        await self._retrying(lambda: self._r.xack(self.stream, self.group, entry_id))

    async def _fail(self, d: Delivery, exc: BaseException, *, timed_out: bool = False) -> None:
        code = str(getattr(exc, "code", type(exc).__name__))
        message = str(getattr(exc, "message", None) or exc) or type(exc).__name__
        if timed_out:
            code, message = "TIMEOUT", f"handler exceeded {self.retry.handler_timeout}s"
        retryable = bool(getattr(exc, "retryable", False)) or timed_out
        history = (*d.history, f"attempt {d.attempt}: {code}: {message}"[:500])
        retry_no = d.attempt  # the n-th retry about to be scheduled
        delay = self.retry.delay_before(retry_no) if retryable else None
        if delay is not None:
            fields = entry_fields(Emit(self.stream, d.payload, d.message_id), d.attempt + 1, history)
            member = netstrings([self.stream, *fields])
            due = int((time.time() + delay) * 1000)
            moved = await self._retrying(
                lambda: self._scripts.retry(
                    keys=[self.stream, self.keys.delayed_zset(self.stream)],
                    args=[self.group, d.entry_id, self.consumer, due, member],
                )
            )
            if moved:
                RETRIED.labels(*self._labels).inc()
                log.info("stream_retry_scheduled", code=code, delay=delay, error=message[:200])
            else:
                LOST.labels(*self._labels).inc()
                log.warning("stream_claim_lost", message_id=d.message_id)
            return
        await self._dead_letter(d, DeadLetter(code=code, message=message, attempts=d.attempt, history=list(history)))

    async def _dead_letter(self, d: Delivery, dead: DeadLetter) -> None:
        dl = Emit(
            self._dead_stream,
            d.payload,
            d.message_id,
            maxlen=self.maxlen,
            extra=(("error", dead.message[:2000]), ("code", dead.code), ("source", d.entry_id),
                   ("history", msgspec.json.encode(dead.history).decode())),
        )  # fmt: skip
        hooked: Sequence[Emit] = ()
        if self.on_dead_letter is not None:
            try:
                hooked = self.on_dead_letter(d, dead)
            except Exception as exc:  # a broken hook must not keep the entry cycling forever
                log.exception("stream_dead_letter_hook_failed", error=str(exc)[:200])
        try:
            ok = await self._retrying(lambda: self._ack_with(d.entry_id, [dl, *hooked]))
        except ResponseError as exc:
            log.error("stream_dead_letter_hook_emit_failed", error=str(exc)[:200])
            ok = await self._retrying(lambda: self._ack_with(d.entry_id, [dl]))
        if ok:
            DEAD.labels(*self._labels).inc()
            log.warning("stream_dead_lettered", code=dead.code, error=dead.message[:200], attempts=dead.attempts)
        else:
            LOST.labels(*self._labels).inc()
            log.warning("stream_claim_lost", message_id=d.message_id)
