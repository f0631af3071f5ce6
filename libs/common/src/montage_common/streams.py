"""Reliable consumer groups over Redis Streams: the engine of the pipeline.

One :class:`StreamConsumer` reads one stream in one consumer group and runs a handler per
entry with bounded concurrency. Its guarantees:

- **Atomic hand-off.** A handler returns the entries it wants to emit (the next stage's task,
  a result, an event); they are written and the source entry is acknowledged in *one* Lua
  script, and only while this consumer still owns the entry. A crash before the script
  leaves the entry pending (another consumer reclaims it); a crash after it leaves nothing
  to redo. A consumer that lost its claim discards its result instead of duplicating it.
- **Live claims are kept.** While a handler runs, its entries' idle time is reset every
  ``claim_idle / 3``, so no other consumer reclaims a long job of a live worker.
- **Dead consumers' entries are reclaimed** with ``XAUTOCLAIM`` after ``claim_idle``; entries
  delivered more than ``max_deliveries`` times (a message that kills its worker) are
  dead-lettered. Consumers gone for ``consumer_gc`` with nothing pending are removed.
- **Durable retries.** A :class:`~montage_common.errors.RetryableError` (or any exception with
  ``retryable = True``) moves the entry, atomically with its ack, into a sorted set scored by
  its due time (backoff 2 s, 4 s, 8 s by default); every consumer promotes due entries back
  to their stream. After the last retry, or on a non-retryable error, the entry goes to the
  dead-letter stream ``<stream>:dead`` with its error and history, and the caller's
  ``on_dead_letter`` hook emits what it wants (e.g. a failure result) in the same script.
- **Recovers from a lost group** (``NOGROUP`` after FLUSHALL or a restart without
  persistence): the group is recreated from the last id this consumer saw, so a surviving
  stream is not replayed. Connection errors back off and retry forever.
- **Safe trimming.** Streams are trimmed to about ``maxlen`` with ``XTRIM MINID ~`` but never
  past the oldest entry that some group still has pending or has not yet read.
- **Graceful stop.** :meth:`StreamConsumer.stop` stops reading; in-flight handlers get
  ``grace`` seconds, then are cancelled and their entries stay pending for another consumer.

All keys one script touches share a hash tag (see :mod:`montage_common.keys`), so this also
runs on Redis Cluster. Works with Redis 6.2+.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from montage_common.keys import Keys

log = structlog.get_logger()

PROCESSED = Counter("montage_stream_processed_total", "Entries handled and acked", ["stream", "group"])
FAILED = Counter("montage_stream_failed_total", "Handler failures", ["stream", "group"])
RETRIED = Counter("montage_stream_retried_total", "Entries scheduled for retry", ["stream", "group"])
DEAD = Counter("montage_stream_dead_lettered_total", "Entries moved to the dead-letter stream", ["stream", "group"])
RECLAIMED = Counter("montage_stream_reclaimed_total", "Entries reclaimed from dead consumers", ["stream", "group"])
LOST = Counter("montage_stream_lost_claims_total", "Results discarded: claim lost", ["stream", "group"])
DURATION = Histogram(
    "montage_stream_handler_duration_seconds",
    "Handler duration",
    ["stream", "group"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900),
)
PENDING = Gauge("montage_stream_pending", "Entries delivered but not acked", ["stream", "group"])
LAG = Gauge("montage_stream_lag_seconds", "Age of the oldest entry the group has not read", ["stream", "group"])

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

# --- Lua --------------------------------------------------------------------------------
# Emit entries (and optionally PUBLISH each new id+payload) then XACK the source entry, only
# while `consumer` owns it. KEYS: [source, emit streams...]; ARGV: group, entry, consumer, n,
# then per emit: maxlen, channel, ttl, and a field count followed by field/value pairs.
_ACK_EMIT = """
local src, group, entry, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if entry ~= '' then
  local p = redis.call('XPENDING', src, group, entry, entry, 1)
  if #p == 0 or p[1][2] ~= consumer then return false end
end
local ids = {}
local i = 5
for k = 2, #KEYS do
  local maxlen, channel, ttl, nf = tonumber(ARGV[i]), ARGV[i+1], tonumber(ARGV[i+2]), tonumber(ARGV[i+3])
  i = i + 4
  local args = {'XADD', KEYS[k]}
  if maxlen > 0 then table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, maxlen) end
  table.insert(args, '*')
  local payload = ''
  for f = 1, nf do
    table.insert(args, ARGV[i]); table.insert(args, ARGV[i+1])
    if ARGV[i] == 'm' then payload = ARGV[i+1] end
    i = i + 2
  end
  local id = redis.call(unpack(args))
  ids[#ids+1] = id
  if channel ~= '' then redis.call('PUBLISH', channel, id .. ' ' .. payload) end
  if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
end
if entry ~= '' then redis.call('XACK', src, group, entry) end
return ids
"""

# Move an owned entry to the delayed set (due at ARGV[4] ms) and ack it.
# KEYS: source, delayed zset. ARGV: group, entry, consumer, due_ms, member.
_RETRY = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Move due delayed entries back to their streams. KEYS: delayed zset. ARGV: now_ms, limit.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local d = cjson.decode(member)
  local args = {'XADD', d.s, '*'}
  for _, v in ipairs(d.f) do table.insert(args, v) end
  redis.call(unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""

# Reset the idle time of the entries this consumer still owns. KEYS: stream.
# ARGV: group, consumer, ids...
_RENEW = """
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"""


@dataclass(frozen=True, slots=True)
class Emit:
    """An entry to add atomically with an ack (or on its own through :class:`StreamProducer`)."""

    stream: str
    payload: bytes
    message_id: str = ""  # stable id; a new uuid when empty
    channel: str = ""  # PUBLISH "<new entry id> <payload>" here after the XADD
    maxlen: int = 0  # approximate cap at XADD; 0 = none (pipeline streams use safe trimming)
    ttl_seconds: int = 0  # EXPIRE the stream key (per-job event logs)
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry handed to a handler, with what it needs to be idempotent."""

    stream: str
    group: str
    entry_id: str
    message_id: str  # stable across retries and redeliveries
    attempt: int  # 1 for the first run, +1 per retry
    delivery_count: int  # times Redis delivered this entry (>1 after a reclaim)
    payload: bytes
    history: tuple[str, ...] = ()  # errors of earlier attempts


class DeadLetter(msgspec.Struct, frozen=True):
    """What a dead-letter hook learns."""

    code: str
    message: str
    attempts: int
    history: list[str]


Handler = Callable[[Delivery], Awaitable[Sequence[Emit]]]
DeadLetterHook = Callable[[Delivery, DeadLetter], Sequence[Emit]]

_history_codec = msgspec.json.Encoder()
_history_decoder = msgspec.json.Decoder(list[str])


def _fields(emit: Emit, attempt: int = 1, history: Sequence[str] = ()) -> list[str | bytes]:
    out: list[str | bytes] = ["id", emit.message_id or uuid.uuid4().hex, "a", str(attempt), "m", emit.payload]
    if history:
        out += ["h", _history_codec.encode(list(history))]
    for k, v in emit.extra:
        out += [k, v]
    return out


def _emit_args(emits: Sequence[Emit]) -> tuple[list[str], list[Any]]:
    keys: list[str] = []
    argv: list[Any] = []
    for e in emits:
        keys.append(e.stream)
        fields = _fields(e)
        argv += [e.maxlen, e.channel, e.ttl_seconds, len(fields) // 2, *fields]
    return keys, argv


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class StreamProducer:
    """Adds entries to streams, several at once atomically."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(_ACK_EMIT)

    async def emit(self, emits: Sequence[Emit]) -> list[str]:
        if not emits:
            return []
        keys, argv = _emit_args(emits)
        ids = await self._script(keys=["", *keys], args=["", "", "", len(emits), *argv])
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


@dataclass
class StreamConsumer:
    """Consume ``stream`` in ``group``; see the module docstring for the guarantees."""

    redis: Redis
    stream: str
    group: str
    handler: Handler
    keys: Keys
    consumer: str = field(default_factory=default_consumer_name)
    concurrency: int = 3
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    backoff: tuple[float, ...] = (2.0, 4.0, 8.0)  # one delay per retry; len = number of retries
    max_deliveries: int = 5  # reclaims before an entry counts as poison
    handler_timeout: float | None = None  # seconds; on expiry the handler is cancelled (retryable)
    maxlen: int = 100_000
    consumer_gc_ms: int = 3_600_000
    grace: float = 20.0
    maintenance_interval: float = 5.0
    on_dead_letter: DeadLetterHook | None = None

    def __post_init__(self) -> None:
        self._r: Any = self.redis  # redis-py's stubs type stream replies loosely
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._last_seen = "0-0"
        self._ack_emit = self._r.register_script(_ACK_EMIT)
        self._retry = self._r.register_script(_RETRY)
        self._promote = self._r.register_script(_PROMOTE)
        self._renew = self._r.register_script(_RENEW)
        self._dead_stream = self.keys.dead_letter_stream(self.stream)
        self._labels = (self.stream, self.group)
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
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _drain(self) -> None:
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight.values()), timeout=self.grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if pending:
                log.warning("stream_handlers_cancelled", stream=self.stream, count=len(pending))

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
                if "NOGROUP" not in str(exc):
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
        cursor = "0"
        while not self._stop.is_set():
            await self._slots.acquire()
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
                if "NOGROUP" not in str(exc):
                    raise
                await self._recreate_group_safely()
                continue
            if cursor == "0" and not entries:
                cursor = ">"
            for entry_id, fields in entries:
                free -= 1
                if cursor == "0":
                    cursor = entry_id  # continue through our backlog
                if fields is None:  # trimmed away while pending
                    await self._ack_only(entry_id)
                    self._slots.release()
                    continue
                self._start(entry_id, fields, delivery_count=1 if cursor == ">" else 2)
            self._release(free)

    async def _read(self, cursor: str, count: int) -> list[tuple[str, dict[bytes, bytes] | None]]:
        block = None if cursor != ">" else self.block_ms
        resp = await self._r.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count, block=block)
        out: list[tuple[str, dict[bytes, bytes] | None]] = []
        for _stream, items in resp or []:
            for entry_id, fields in items:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.append((eid, fields or None))
                self._last_seen = max(self._last_seen, eid, key=_id_key)
        return out

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _start(self, entry_id: str, fields: dict[bytes, bytes], delivery_count: int) -> None:
        history = tuple(_history_decoder.decode(fields[b"h"])) if b"h" in fields else ()
        delivery = Delivery(
            stream=self.stream,
            group=self.group,
            entry_id=entry_id,
            message_id=fields.get(b"id", entry_id.encode()).decode(),
            attempt=int(fields.get(b"a", b"1")),
            delivery_count=delivery_count,
            payload=fields.get(b"m", b""),
            history=history,
        )
        task = asyncio.create_task(self._handle(delivery), name=f"handle:{entry_id}")
        self._inflight[entry_id] = task

        def done(_t: asyncio.Task[None]) -> None:
            self._inflight.pop(entry_id, None)
            self._slots.release()

        task.add_done_callback(done)

    # --- handling -------------------------------------------------------------------
    async def _handle(self, d: Delivery) -> None:
        start = time.perf_counter()
        with structlog.contextvars.bound_contextvars(stream=self.stream, entry=d.entry_id, attempt=d.attempt):
            try:
                if self.handler_timeout:
                    async with asyncio.timeout(self.handler_timeout):
                        emits = await self.handler(d)
                else:
                    emits = await self.handler(d)
            except asyncio.CancelledError:
                raise  # shutdown: leave the entry pending for another consumer
            except Exception as exc:
                DURATION.labels(*self._labels).observe(time.perf_counter() - start)
                FAILED.labels(*self._labels).inc()
                await self._fail(d, exc)
                return
            DURATION.labels(*self._labels).observe(time.perf_counter() - start)
            ok = await self._retrying(lambda: self._ack_with(d.entry_id, emits))
            if ok:
                PROCESSED.labels(*self._labels).inc()
            else:
                LOST.labels(*self._labels).inc()
                log.warning("stream_claim_lost", message_id=d.message_id)

    async def _ack_with(self, entry_id: str, emits: Sequence[Emit]) -> bool:
        keys, argv = _emit_args(emits)
        res = await self._ack_emit(
            keys=[self.stream, *keys], args=[self.group, entry_id, self.consumer, len(emits), *argv]
        )
        return res is not None

    async def _ack_only(self, entry_id: str) -> None:
        await self._retrying(lambda: self._r.xack(self.stream, self.group, entry_id))

    async def _fail(self, d: Delivery, exc: BaseException) -> None:
        code = str(getattr(exc, "code", type(exc).__name__))
        message = str(getattr(exc, "message", None) or exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            code, message = "TIMEOUT", f"handler exceeded {self.handler_timeout}s"
        retryable = bool(getattr(exc, "retryable", False)) or isinstance(exc, TimeoutError)
        history = (*d.history, f"attempt {d.attempt}: {code}: {message}"[:500])
        retry_no = d.attempt  # the n-th retry about to be scheduled
        if retryable and retry_no <= len(self.backoff):
            delay = self.backoff[retry_no - 1]
            fields = _fields(Emit(self.stream, d.payload, d.message_id), d.attempt + 1, history)
            member = msgspec.json.encode(
                {"s": self.stream, "f": [f if isinstance(f, str) else f.decode() for f in fields]}
            )
            due = int((time.time() + delay) * 1000)
            moved = await self._retrying(
                lambda: self._retry(
                    keys=[self.stream, self.keys.delayed_zset()],
                    args=[self.group, d.entry_id, self.consumer, due, member],
                )
            )
            if moved:
                RETRIED.labels(*self._labels).inc()
                log.info("stream_retry_scheduled", code=code, delay=delay, error=message[:200])
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
        emits = [dl, *(self.on_dead_letter(d, dead) if self.on_dead_letter else ())]
        ok = await self._retrying(lambda: self._ack_with(d.entry_id, emits))
        if ok:
            DEAD.labels(*self._labels).inc()
            log.warning("stream_dead_lettered", code=dead.code, error=dead.message[:200], attempts=dead.attempts)

    # --- background loops -----------------------------------------------------------
    async def _renew_loop(self) -> None:
        interval = max(self.claim_idle_ms / 3000, 0.05)
        while True:
            await asyncio.sleep(interval)
            ids = list(self._inflight)
            if ids:
                with contextlib.suppress(*REDIS_DOWN, ResponseError):
                    await self._renew(keys=[self.stream], args=[self.group, self.consumer, *ids])

    async def _promote_loop(self) -> None:
        interval = min(max(min(self.backoff, default=1.0) / 8, 0.01), 0.5)
        while True:
            with contextlib.suppress(*REDIS_DOWN):
                moved = await self._promote(keys=[self.keys.delayed_zset()], args=[int(time.time() * 1000), 100])
                if moved:
                    continue
            await asyncio.sleep(interval)

    async def _maintenance_loop(self) -> None:
        interval = min(self.maintenance_interval, self.claim_idle_ms / 2000)
        while True:
            await asyncio.sleep(interval)
            try:
                if not self._stop.is_set():
                    await self.reclaim()
                await self.maintain()
            except REDIS_DOWN as exc:
                log.warning("stream_maintenance_failed", error=str(exc)[:200])
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._recreate_group_safely()
                else:
                    log.warning("stream_maintenance_failed", error=str(exc)[:200])

    async def reclaim(self) -> int:
        """Take over entries idle longer than ``claim_idle_ms`` (their consumer is gone)."""
        taken = 0
        start = "0-0"
        while not self._stop.is_set():
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                break
            resp = await self._r.execute_command(
                "XAUTOCLAIM", self.stream, self.group, self.consumer, self.claim_idle_ms, start, "COUNT", free
            )
            next_start = resp[0].decode() if isinstance(resp[0], bytes) else str(resp[0])
            for item in resp[1]:
                if not item:
                    continue
                raw_id, raw_fields = item[0], item[1]
                eid = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                if eid in self._inflight:
                    continue
                if not raw_fields:  # deleted while pending
                    await self._r.xack(self.stream, self.group, eid)
                    continue
                fields = dict(zip(raw_fields[::2], raw_fields[1::2], strict=True))
                info = await self._r.xpending_range(self.stream, self.group, eid, eid, 1)
                count = int(info[0]["times_delivered"]) if info else 2
                RECLAIMED.labels(*self._labels).inc()
                log.warning("stream_entry_reclaimed", entry=eid, deliveries=count)
                await self._slots.acquire()
                d_fields: dict[bytes, bytes] = fields
                if count > self.max_deliveries:
                    self._slots.release()
                    d = Delivery(self.stream, self.group, eid, d_fields.get(b"id", b"").decode(),
                                 int(d_fields.get(b"a", b"1")), count, d_fields.get(b"m", b""))  # fmt: skip
                    await self._dead_letter(
                        d, DeadLetter("POISON", f"delivered {count} times without completing", d.attempt, [])
                    )
                    continue
                self._start(eid, d_fields, delivery_count=count)
                taken += 1
            for deleted in resp[2] if len(resp) > 2 else ():  # Redis 7: ids trimmed while pending
                with contextlib.suppress(ResponseError):
                    await self._r.xack(self.stream, self.group, deleted)
            if next_start == "0-0":
                break
            start = next_start
        return taken

    async def maintain(self) -> None:
        """Safe trimming, stale-consumer removal, pending and lag gauges."""
        groups = await self._r.xinfo_groups(self.stream)
        floor: str | None = None
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else str(last)
            oldest = last
            if int(g["pending"]) > 0:
                summary = await self._r.xpending(self.stream, name)
                low = summary["min"]
                oldest = low.decode() if isinstance(low, bytes) else str(low)
            floor = oldest if floor is None else min(floor, oldest, key=_id_key)
            if name == self.group:
                PENDING.labels(*self._labels).set(int(g["pending"]))
                first_unread = await self._r.xrange(self.stream, min=f"({last}", count=1) if last else []
                lag = (time.time() * 1000 - _ms(first_unread[0][0].decode())) / 1000 if first_unread else 0.0
                LAG.labels(*self._labels).set(max(lag, 0.0))
        length = await self._r.xlen(self.stream)
        if floor is not None and length > self.maxlen:
            cut = await self._r.xrevrange(self.stream, count=1, min="-", max="+")
            # the id `maxlen` entries from the end
            window = await self._r.xrevrange(self.stream, count=self.maxlen + 1)
            if cut and len(window) > self.maxlen:
                cutoff = window[-1][0].decode()
                minid = min(cutoff, floor, key=_id_key)
                await self._r.execute_command("XTRIM", self.stream, "MINID", "~", minid)
        for c in await self._r.xinfo_consumers(self.stream, self.group):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name != self.consumer and int(c["pending"]) == 0 and int(c["idle"]) > self.consumer_gc_ms:
                await self._r.xgroup_delconsumer(self.stream, self.group, name)
                log.info("stream_consumer_removed", consumer=name)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
