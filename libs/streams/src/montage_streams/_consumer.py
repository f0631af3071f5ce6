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
- **Read-ahead.** Besides the ``concurrency`` entries its handlers run, a consumer holds up to
  ``read_ahead`` more, read in the same round trips, so that a hand-off call carries the
  results of more entries than there are handlers (fewer round trips per entry). It reads
  ahead only as many as its handlers get through in about ``read_ahead_wait`` seconds at their
  recent average duration (none before the first handler finished, none for slow handlers), so
  an entry never waits long in one consumer while another is idle. Entries read ahead are
  claimed by this consumer like running ones: renewed while held, reclaimed by others if it
  dies, and on stop released (made reclaimable at once, their delivery count put back) rather
  than run. A handler does not wait for its hand-off: it takes the next entry while the
  hand-off goes out with others in one script call. The same write carries a plain
  ``XREADGROUP`` for the next entries (one round trip; reading inside the script would convert
  every entry to Lua and back, which costs Redis more than the read itself); on a client without
  a connection pool of its own (a cluster client) the script fetches them instead.

All keys one script touches share a hash tag (the caller's :class:`KeyLayout` decides the
names), so this also runs on Redis Cluster. Works with Redis 6.2+. The package knows nothing
of Montage's pipeline: it depends on redis, msgspec, structlog and prometheus-client only.

Layout: this module holds the consumer's lifecycle, reading and hand-off;
:class:`._maintenance.ConsumerMaintenance` its background work (renewal, release, promotion,
reclaim, trimming), an object the consumer creates with explicit dependencies;
:mod:`._scripts` the Lua scripts; :mod:`._replies` the typed decoding of Redis replies;
:mod:`._model` the entry types and the key layout; :mod:`._metrics` the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

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
)
from montage_streams._replies import HandOffReply, StreamEntry, count_reply, hand_off_reply, read_reply
from montage_streams._retry import RetryPolicy
from montage_streams._scripts import Scripts, batch_args, entry_fields, netstrings, pool_of, send_both

log = structlog.get_logger()

_HANDOFF_CALLS = 2  # hand-off script calls in flight per consumer
_EWMA = 0.2  # weight of the newest handler duration in the running average

Commit = tuple[Delivery, Sequence[Emit]]


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
        return hand_off_reply(res, 1).ids[0] or []


@dataclass
class StreamConsumer:
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
    # Called with an entry's emits once they are written (its hand-off answered "owned"): e.g. to
    # copy what was just logged elsewhere. Must not block; an exception is logged, not raised.
    on_handed_off: Callable[[Sequence[Emit]], None] | None = None
    read_ahead: int = 16  # entries held beyond the running ones, at most (0: none)
    read_ahead_wait: float = 0.05  # ... and only as many as the handlers get through in about this

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.read_ahead < 0:
            raise ValueError("concurrency must be >= 1 and read_ahead >= 0")
        self._r: Any = self.redis  # redis-py's stubs type stream replies loosely
        self._stop = asyncio.Event()
        self._available = asyncio.Event()  # the read-ahead buffer got entries (or we stop)
        self._poke = asyncio.Event()  # room or hand-off calls changed (or we stop): the reader looks again
        self._buffer: deque[Delivery] = deque()  # read, owned, not started (renewed meanwhile)
        self._running: dict[str, Delivery] = {}  # handlers running
        self._committing: dict[str, Delivery] = {}  # hand-off queued or in flight
        self._requested = 0  # entries asked for in reads still in flight
        self._avg_duration: float | None = None  # running average of handler durations (s)
        self._workers: list[asyncio.Task[None]] = []
        self._last_seen = "0-0"
        self._scripts = Scripts(self.redis)
        self._pool = pool_of(self.redis)  # hand-offs fetch with a plain read in the same write
        self._dead_stream = self.keys.dead_letter_stream(self.stream)
        self._labels = (self.stream, self.group)
        self._processed = PROCESSED.labels(*self._labels)
        self._failed = FAILED.labels(*self._labels)
        self._lost = LOST.labels(*self._labels)
        self._duration = DURATION.labels(*self._labels)
        self._commits: list[Commit] = []
        self._flushers: set[asyncio.Task[None]] = set()  # hand-off calls in flight (at most _HANDOFF_CALLS)
        self._flush_due = False  # a flusher is created and has not taken its batch yet
        self._maintenance = ConsumerMaintenance(
            redis=self._r,
            stream=self.stream,
            group=self.group,
            consumer=self.consumer,
            delayed_zset=self.keys.delayed_zset(self.stream),
            retry=self.retry,
            scripts=self._scripts,
            claim_idle_ms=self.claim_idle_ms,
            maxlen=self.maxlen,
            consumer_gc_ms=self.consumer_gc_ms,
            interval=self.maintenance_interval,
            held=self._held,
            room=self._reclaim_room,
            take=self._take,
            dead_letter=self._dead_letter,
            recover_group=self._recreate_group_safely,
            stopping=self._stop.is_set,
        )
        self.started = asyncio.Event()

    @property
    def renewed_at(self) -> float:
        """When its claim-renewal loop last turned (``time.monotonic()``): a process's liveness
        check can tell a consumer whose claims are still renewed from one whose loop stopped."""
        return self._maintenance.renewed_at

    # --- lifecycle ------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading; :meth:`run` returns after in-flight work finished or was cancelled."""
        self._stop.set()
        self._available.set()
        self._poke.set()

    async def run(self) -> None:
        await self._retrying(self.ensure_group)
        self._maintenance.start()
        self._workers = [asyncio.create_task(self._work(), name="handler") for _ in range(self.concurrency)]
        self.started.set()
        try:
            await self._read_loop()
        finally:
            await self._drain()
            await self._release_unstarted()
            await self._maintenance.close()

    async def _drain(self) -> None:
        self.stop()
        workers = [w for w in self._workers if not w.done()]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=self.grace)
            busy = len(self._running)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)  # bounded: a handler may ignore its cancel
                log.warning("stream_handlers_cancelled", stream=self.stream, count=busy)
        if self._flushers:
            await asyncio.wait(list(self._flushers), timeout=5.0)

    async def _release_unstarted(self) -> None:
        """Entries read ahead and never started: released for other consumers at once."""
        ids = [d.entry_id for d in self._buffer]
        self._buffer.clear()
        if ids:
            try:
                async with asyncio.timeout(5.0):
                    await self._maintenance.release(ids)
            except Exception as exc:  # Redis down: they are reclaimed after claim_idle_ms instead
                log.warning("stream_release_failed", stream=self.stream, count=len(ids), error=str(exc)[:200])

    async def ensure_group(self, start_id: str = "0") -> None:
        try:
            await self._r.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
            log.info("stream_group_created", stream=self.stream, group=self.group, start=start_id)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def reclaim(self) -> int:
        """Take over entries idle longer than ``claim_idle_ms`` (see :class:`ConsumerMaintenance`)."""
        return await self._maintenance.reclaim()

    async def maintain(self) -> None:
        """Safe trimming, stale-consumer removal, gauges (see :class:`ConsumerMaintenance`)."""
        await self._maintenance.maintain()

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

    # --- what this consumer holds ---------------------------------------------------
    def _held(self) -> list[str]:
        """Every entry this consumer owns and works on: running, handing off, read ahead."""
        return [*self._running, *self._committing, *(d.entry_id for d in self._buffer)]

    def _holds(self, entry_id: str) -> bool:
        return (
            entry_id in self._running
            or entry_id in self._committing
            or entry_id in self._maintenance.claiming()
            or any(d.entry_id == entry_id for d in self._buffer)
        )

    def _capacity(self) -> int:
        """Running plus read-ahead entries this consumer may hold now."""
        ahead = self.read_ahead
        if ahead:
            avg = self._avg_duration
            ahead = 0 if avg is None else min(ahead, int(self.read_ahead_wait * self.concurrency / max(avg, 1e-6)))
        return self.concurrency + ahead

    def _room(self) -> int:
        """How many more entries to read now (those asked for in reads in flight count as held)."""
        return self._reclaim_room() - self._requested

    def _reclaim_room(self) -> int:
        """How many entries a reclaim may take: a blocking read in flight does not hold it back
        (it may come back empty after ``block_ms``)."""
        held = len(self._buffer) + len(self._running) + len(self._maintenance.claiming())
        return self._capacity() - held

    def _take(self, d: Delivery) -> None:
        """Queue an entry for the handlers (reclaimed ones go first: they are the oldest)."""
        self._buffer.appendleft(d)
        self._available.set()

    def _push(self, entries: Sequence[StreamEntry], delivery_count: int) -> None:
        for entry_id, fields in entries:
            self._buffer.append(delivery(self.stream, self.group, entry_id, fields or {}, delivery_count))
        if entries:
            self._note_seen(entries[-1].entry_id)
            self._available.set()

    # --- reading --------------------------------------------------------------------
    async def _read_loop(self) -> None:
        # Our own pending entries first (a restart under the same consumer name), then new ones.
        cursor = "0-0"
        while not self._stop.is_set():
            self._poke.clear()
            want = self._room()
            # Under load the hand-offs fetch the next entries; read only when none is in flight.
            if want <= 0 or (cursor == ">" and self._flushers):
                await self._poke.wait()
                continue
            self._requested += want
            try:
                entries = await self._read(cursor, want)
            except REDIS_DOWN as exc:
                log.warning("stream_redis_unavailable", stream=self.stream, error=str(exc)[:200])
                await self._sleep_unless_stopped(0.5)
                continue
            except ResponseError as exc:
                if not group_lost(exc):
                    raise
                await self._recreate_group_safely()
                cursor = ">"  # the old pending list went with the group
                continue
            finally:
                self._requested -= want
            history = cursor != ">"
            if history:
                cursor = entries[-1].entry_id if entries else ">"
                fresh: list[StreamEntry] = []
                for e in entries:
                    if self._holds(e.entry_id):  # already running (reclaimed meanwhile)
                        continue
                    if e.fields is None:  # deleted or trimmed while pending
                        await self._ack_only(e.entry_id)
                        continue
                    fresh.append(e)
                self._push(fresh, delivery_count=2)
            else:
                self._push(entries, delivery_count=1)

    async def _read(self, cursor: str, count: int) -> list[StreamEntry]:
        block = None if cursor != ">" else self.block_ms
        resp = await self._r.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count, block=block)
        return read_reply(resp)

    def _note_seen(self, entry_id: str) -> None:
        if id_key(entry_id) > id_key(self._last_seen):
            self._last_seen = entry_id

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # --- handling -------------------------------------------------------------------
    async def _work(self) -> None:
        """One of ``concurrency`` handler loops: take an entry, run it, queue its hand-off."""
        structlog.contextvars.bind_contextvars(stream=self.stream)  # task-local, for every entry it runs
        while True:
            while not self._buffer:
                if self._stop.is_set():
                    return
                self._available.clear()
                await self._available.wait()
            if self._stop.is_set():
                return  # what is left was read ahead: released on the way out
            d = self._buffer.popleft()
            self._running[d.entry_id] = d
            try:
                await self._handle(d)
            finally:
                self._running.pop(d.entry_id, None)
                self._poke.set()

    async def _handle(self, d: Delivery) -> None:
        """Run one entry's handler; queue its hand-off, or schedule its retry or dead letter."""
        start = time.perf_counter()
        structlog.contextvars.bind_contextvars(entry=d.entry_id, attempt=d.attempt)  # task-local
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
            self._observe(time.perf_counter() - start)
            self._failed.inc()
            await self._fail(d, exc, timed_out=deadline is not None and deadline.expired())
            return
        self._observe(time.perf_counter() - start)
        self._commit(d, emits)

    def _observe(self, seconds: float) -> None:
        self._duration.observe(seconds)
        avg = self._avg_duration
        self._avg_duration = seconds if avg is None else avg + _EWMA * (seconds - avg)

    def _commit(self, d: Delivery, emits: Sequence[Emit]) -> None:
        """Queue one hand-off; those queued until a call goes out go in that one call.

        Up to ``_HANDOFF_CALLS`` calls are in flight at once, and the handler does not wait for
        them: it goes on with the next entry (the entry stays held, and renewed, until its
        hand-off is answered).
        """
        self._running.pop(d.entry_id, None)
        self._committing[d.entry_id] = d
        self._commits.append((d, emits))
        if not self._flush_due and len(self._flushers) < _HANDOFF_CALLS:
            self._flush_due = True
            task = asyncio.create_task(self._flush(), name="hand-off")
            self._flushers.add(task)
            task.add_done_callback(self._flusher_done)

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        self._flushers.discard(task)
        self._poke.set()
        if task.cancelled():
            self._flush_due = False  # it may have ended before taking its batch

    async def _flush(self) -> None:
        """Send queued hand-offs in one script call that also fetches the next entries."""
        try:
            await self._flush_queued()
        finally:
            # In the same step as the last look at the queue: a hand-off queued from now on
            # sees a free call and starts its own flusher.
            self._flushers.discard(asyncio.current_task())
            self._poke.set()

    async def _flush_queued(self) -> None:
        while self._commits:
            self._flush_due = False
            batch, self._commits = self._commits, []
            fetch = 0 if self._stop.is_set() else max(self._room(), 0)
            self._requested += fetch
            results: list[bool | BaseException]
            fetched: list[StreamEntry] = []
            try:
                reply = await self._retrying(functools.partial(self._ack_batch, batch, fetch))
                results, fetched = list(reply.owned), reply.fetched
            except ResponseError as exc:
                # One bad hand-off (e.g. a wrong-type key) must not fail the others with it.
                results = [exc] if len(batch) == 1 else [await self._commit_one(one) for one in batch]
            except BaseException as exc:  # stopping while Redis is down, or cancelled: left pending
                for d, _ in batch:
                    self._committing.pop(d.entry_id, None)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.warning("stream_hand_off_abandoned", stream=self.stream, count=len(batch), error=str(exc)[:200])
                continue
            finally:
                self._requested -= fetch
            self._push(fetched, delivery_count=1)
            done = 0
            for (d, emits), res in zip(batch, results, strict=True):
                if res is True:
                    done += 1
                    if self.on_handed_off is not None and emits:
                        try:
                            self.on_handed_off(emits)
                        except Exception as exc:
                            log.warning("stream_hand_off_hook_failed", stream=self.stream, error=str(exc)[:200])
                elif res is False:
                    self._lost.inc()
                    log.warning("stream_claim_lost", message_id=d.message_id, entry=d.entry_id)
                else:  # e.g. an emit to a key of the wrong type
                    self._failed.inc()
                    await self._fail(d, HandOffError(str(res)))
                self._committing.pop(d.entry_id, None)
            if done:
                self._processed.inc(done)

    async def _commit_one(self, one: Commit) -> bool | BaseException:
        try:
            reply: HandOffReply = await self._retrying(functools.partial(self._ack_batch, [one], 0))
        except Exception as exc:
            return exc
        return reply.owned[0]

    async def _ack_batch(self, batch: Sequence[Commit], fetch: int = 0) -> HandOffReply:
        return await self._hand_off([(d.entry_id, emits) for d, emits in batch], fetch)

    async def _ack_with(self, entry_id: str, emits: Sequence[Emit]) -> bool:
        return (await self._hand_off([(entry_id, emits)])).owned[0]

    async def _hand_off(self, pairs: Sequence[tuple[str, Sequence[Emit]]], fetch: int = 0) -> HandOffReply:
        """One ``ack_emit`` call: each ``(entry id, emits)`` handed off, then ``fetch`` new entries
        (read by an ``XREADGROUP`` sent in the same write behind the script, when the client
        has a connection pool: cheaper for Redis than the script's own fetch)."""
        pool = self._pool
        keys, argv = batch_args(self.stream, pairs, 0 if pool is not None else fetch, ids=False)
        args = [self.group, self.consumer, *argv]
        if not fetch or pool is None:
            res = await self._scripts.ack_emit(keys=keys, args=args)
            return hand_off_reply(res, len(pairs))
        script = self._scripts.ack_emit
        res, read = await send_both(
            pool,
            ("EVALSHA", script.sha, len(keys), *keys, *args),
            ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", fetch, "STREAMS", self.stream, ">"),
        )
        fetched = [] if isinstance(read, BaseException) else read_reply(read)
        if isinstance(res, BaseException):
            self._push(fetched, delivery_count=1)  # ours now, whatever became of the hand-off
            if not isinstance(res, NoScriptError):
                raise res
            res = await script(keys=keys, args=args)  # loads the script (Redis restarted, or its first use)
            fetched = []
        return hand_off_reply(res, len(pairs))._replace(fetched=fetched)

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
            if count_reply(moved):
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
