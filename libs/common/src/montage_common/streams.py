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
  delivered more than ``max_deliveries`` times (a message that kills its worker) are
  dead-lettered. Consumers gone for ``consumer_gc`` with nothing pending are removed.
- **Durable retries.** A :class:`~montage_common.errors.RetryableError` (or any exception with
  ``retryable = True``) moves the entry, atomically with its ack, into a sorted set scored by
  its due time (backoff 2 s, 4 s, 8 s by default: one delay per retry, so 1 + ``len(backoff)``
  attempts); every consumer promotes due entries back to their stream. After the last retry,
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

All keys one script touches share a hash tag (see :mod:`montage_common.keys`), so this also
runs on Redis Cluster. Works with Redis 6.2+.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
# Hand off a batch of entries, then fetch new ones for the slots this frees. For each entry,
# only while `consumer` owns it: XADD its emits (fields id, a=1, m, extras; optionally PUBLISH
# "<id> <payload>" and EXPIRE the stream) and XACK it. An entry id of '' means "no source
# entry" (the producer). Returns per entry the new ids, or false if the claim was lost; then
# up to `fetch` new entries (XREADGROUP >) or false. KEYS: [source, emit streams...].
# ARGV: group, consumer, n_entries, fetch, then per entry: entry id, n_emits, then per emit:
# "<key index> <maxlen> <ttl> <n_extra>", channel, message id, payload, extra pairs.
_ACK_EMIT = """
local src, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local n, fetch = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local i = 5
for e = 1, n do
  local entry, nemits = ARGV[i], tonumber(ARGV[i+1])
  i = i + 2
  local owned = true
  if entry ~= '' then
    local p = redis.call('XPENDING', src, group, entry, entry, 1)
    owned = #p > 0 and p[1][2] == consumer
  end
  local ids = {}
  for _ = 1, nemits do
    local k, maxlen, ttl, nx = string.match(ARGV[i], '(%d+) (%d+) (%d+) (%d+)')
    local key, channel, payload = KEYS[tonumber(k)], ARGV[i+1], ARGV[i+3]
    maxlen, ttl, nx = tonumber(maxlen), tonumber(ttl), tonumber(nx)
    if owned then
      local args = {'XADD', key}
      if maxlen > 0 then args[3] = 'MAXLEN'; args[4] = '~'; args[5] = maxlen end
      args[#args+1] = '*'
      args[#args+1] = 'id'; args[#args+1] = ARGV[i+2]
      args[#args+1] = 'a'; args[#args+1] = '1'
      args[#args+1] = 'm'; args[#args+1] = payload
      for f = i + 4, i + 3 + 2 * nx do args[#args+1] = ARGV[f] end
      local id = redis.call(unpack(args))
      ids[#ids+1] = id
      if channel ~= '' then redis.call('PUBLISH', channel, id .. ' ' .. payload) end
      if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    end
    i = i + 4 + 2 * nx
  end
  if owned then
    if entry ~= '' then redis.call('XACK', src, group, entry) end
    out[e] = ids
  else
    out[e] = false
  end
end
if fetch > 0 then
  out[n+1] = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', fetch, 'STREAMS', src, '>')
end
return out
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
# A member is netstrings "<len>:<bytes>" of [stream, field, value, ...] (binary safe); a
# member starting with '{' is the older JSON form {"s": stream, "f": [fields]}.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local parts = {}
  if string.sub(member, 1, 1) == '{' then
    local d = cjson.decode(member)
    parts[1] = d.s
    for _, v in ipairs(d.f) do parts[#parts+1] = v end
  else
    local i = 1
    while i <= #member do
      local c = string.find(member, ':', i, true)
      local n = tonumber(string.sub(member, i, c - 1))
      parts[#parts+1] = string.sub(member, c + 1, c + n)
      i = c + n + 1
    end
  end
  local args = {'XADD', parts[1], '*'}
  for k = 2, #parts do args[#args+1] = parts[k] end
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

# Ack this consumer's pending entries that no longer exist in the stream (deleted or trimmed
# while pending; Redis 6.2's XAUTOCLAIM claims them without telling their ids).
# KEYS: stream. ARGV: group, consumer, limit.
_ACK_MISSING = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
local n = 0
for _, e in ipairs(p) do
  if #redis.call('XRANGE', KEYS[1], e[1], e[1]) == 0 then
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
    n = n + 1
  end
end
return n
"""

# Safe trim: cut to about `maxlen` entries but never past the oldest entry some group has
# pending or not yet read. Looks at most `scan` entries per call. KEYS: stream.
# ARGV: maxlen, scan. Returns the number of entries removed.
_TRIM = """
local len = redis.call('XLEN', KEYS[1])
local maxlen = tonumber(ARGV[1])
if len <= maxlen then return 0 end
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(len - maxlen, tonumber(ARGV[2])) + 1)
local function key(id)
  local d = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end
local function less(a, b)
  local am, as = key(a)
  local bm, bs = key(b)
  return am < bm or (am == bm and as < bs)
end
local cut = head[#head][1]
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for k = 1, #g, 2 do info[g[k]] = g[k+1] end
  local floor = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    floor = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if less(floor, cut) then cut = floor end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', cut)
"""

# Remove consumers idle longer than ARGV[3] ms with nothing pending (never ARGV[2], us).
# KEYS: stream. ARGV: group, consumer, gc_ms. Returns the removed names.
_GC_CONSUMERS = """
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for k = 1, #c, 2 do info[c[k]] = c[k+1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed+1] = info['name']
  end
end
return removed
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


def _batch_args(
    source: str, batch: Sequence[tuple[str, Sequence[Emit]]], fetch: int = 0
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`_ACK_EMIT` (minus group and consumer) for ``(entry, emits)`` pairs."""
    keys: list[str] = [source]
    index: dict[str, int] = {source: 1}
    argv: list[Any] = [len(batch), fetch]
    for entry_id, emits in batch:
        argv += [entry_id, len(emits)]
        for e in emits:
            k = index.get(e.stream)
            if k is None:
                keys.append(e.stream)
                k = index[e.stream] = len(keys)
            argv += [f"{k} {e.maxlen} {e.ttl_seconds} {len(e.extra)}", e.channel, e.message_id or uuid.uuid4().hex,
                     e.payload]  # fmt: skip
            for name, value in e.extra:
                argv += [name, value]
    return keys, argv


def _netstrings(parts: Sequence[str | bytes]) -> bytes:
    out = bytearray()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out += b"%d:%s" % (len(b), b)
    return bytes(out)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        # The first emitted stream stands in as the (unused) source key: no foreign slot.
        keys, argv = _batch_args(emits[0].stream, [("", emits)])
        res = await self._script(keys=keys, args=["", "", *argv])
        return [_text(i) for i in res[0]]


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
        self._closing = asyncio.Event()  # background loops end (after the drain)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._claimed: set[str] = set()  # reclaimed, waiting for a slot (renewed meanwhile)
        self._last_seen = "0-0"
        self._ack_emit = self._r.register_script(_ACK_EMIT)
        self._retry = self._r.register_script(_RETRY)
        self._promote = self._r.register_script(_PROMOTE)
        self._renew = self._r.register_script(_RENEW)
        self._ack_missing = self._r.register_script(_ACK_MISSING)
        self._trim = self._r.register_script(_TRIM)
        self._gc = self._r.register_script(_GC_CONSUMERS)
        self._dead_stream = self.keys.dead_letter_stream(self.stream)
        self._labels = (self.stream, self.group)
        self._processed = PROCESSED.labels(*self._labels)
        self._failed = FAILED.labels(*self._labels)
        self._duration = DURATION.labels(*self._labels)
        self._commits: list[tuple[str, Sequence[Emit], asyncio.Future[tuple[bool, Delivery | None]]]] = []
        self._flusher: asyncio.Task[None] | None = None
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
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=5.0)

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
                if not _group_lost(exc):
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
                if not _group_lost(exc):
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
                eid = _text(entry_id)
                out.append((eid, fields or None))
        if out:
            self._note_seen(out[-1][0])
        return out

    def _note_seen(self, entry_id: str) -> None:
        if _id_key(entry_id) > _id_key(self._last_seen):
            self._last_seen = entry_id

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _delivery(self, entry_id: str, fields: dict[bytes, bytes], delivery_count: int) -> Delivery:
        raw_id = fields.get(b"id")
        return Delivery(
            self.stream,
            self.group,
            entry_id,
            raw_id.decode() if raw_id else entry_id,
            int(fields.get(b"a", b"1")),
            delivery_count,
            fields.get(b"m", b""),
            tuple(_history_decoder.decode(fields[b"h"])) if b"h" in fields else (),
        )

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
        deadline = asyncio.timeout(self.handler_timeout)
        try:
            async with deadline:
                emits = await self.handler(d)
        except asyncio.CancelledError:
            raise  # shutdown: leave the entry pending for another consumer
        except Exception as exc:
            self._duration.observe(time.perf_counter() - start)
            self._failed.inc()
            await self._fail(d, exc, timed_out=deadline.expired())
            return None
        self._duration.observe(time.perf_counter() - start)
        try:
            ok, nxt = await self._commit(d.entry_id, emits)
        except ResponseError as exc:  # e.g. an emit to a key of the wrong type
            self._failed.inc()
            await self._fail(d, _HandOffError(str(exc)))
            return None
        if ok:
            self._processed.inc()
        else:
            LOST.labels(*self._labels).inc()
            log.warning("stream_claim_lost", message_id=d.message_id)
        return nxt

    async def _commit(self, entry_id: str, emits: Sequence[Emit]) -> tuple[bool, Delivery | None]:
        """Queue one hand-off; hand-offs queued while a call is in flight go in the next call."""
        fut: asyncio.Future[tuple[bool, Delivery | None]] = asyncio.get_running_loop().create_future()
        self._commits.append((entry_id, emits, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="hand-off")
        return await fut

    async def _flush(self) -> None:
        """Send queued hand-offs in one script call that also fetches an entry per freed slot."""
        while self._commits:
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
        keys, argv = _batch_args(self.stream, [(entry_id, emits) for entry_id, emits, _ in batch], fetch)
        res = await self._ack_emit(keys=keys, args=[self.group, self.consumer, *argv])
        oks = [r is not None for r in res[: len(batch)]]
        fetched: list[tuple[str, dict[bytes, bytes]]] = []
        if len(res) > len(batch) and res[-1]:
            for raw_id, flat in res[-1][0][1]:
                fetched.append((_text(raw_id), dict(zip(flat[::2], flat[1::2], strict=True))))
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
            code, message = "TIMEOUT", f"handler exceeded {self.handler_timeout}s"
        retryable = bool(getattr(exc, "retryable", False)) or timed_out
        history = (*d.history, f"attempt {d.attempt}: {code}: {message}"[:500])
        retry_no = d.attempt  # the n-th retry about to be scheduled
        if retryable and retry_no <= len(self.backoff):
            delay = self.backoff[retry_no - 1]
            fields = _fields(Emit(self.stream, d.payload, d.message_id), d.attempt + 1, history)
            member = _netstrings([self.stream, *fields])
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

    # --- background loops -----------------------------------------------------------
    async def _renew_loop(self) -> None:
        interval = max(self.claim_idle_ms / 3000, 0.05)
        while await self._pause(interval):
            ids = [*self._inflight, *self._claimed]
            if ids:
                try:
                    await self._renew(keys=[self.stream], args=[self.group, self.consumer, *ids])
                except Exception as exc:  # keep renewing whatever happens
                    _reraise_if_cancelling()
                    log.warning("stream_renew_failed", stream=self.stream, error=str(exc)[:200])

    async def _promote_loop(self) -> None:
        interval = min(max(min(self.backoff, default=1.0) / 8, 0.01), 0.5)
        while not self._closing.is_set():
            try:
                moved = await self._promote(keys=[self.keys.delayed_zset()], args=[int(time.time() * 1000), 100])
                if moved:
                    continue
            except Exception as exc:
                _reraise_if_cancelling()
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
                _reraise_if_cancelling()
                if isinstance(exc, ResponseError) and _group_lost(exc):
                    await self._recreate_group_safely()
                    continue
                log.warning("stream_maintenance_failed", error=str(exc)[:200])

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless closing; False once closing."""
        _reraise_if_cancelling()
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
            next_start = _text(resp[0])
            claimed: list[tuple[str, dict[bytes, bytes]]] = []
            missing = False
            for raw_id, fields in resp[1]:
                if raw_id is None or not fields:  # deleted while pending (Redis 6.2 hides the id)
                    missing = True
                    continue
                eid = _text(raw_id)
                if eid not in self._inflight and eid not in self._claimed:
                    claimed.append((eid, fields))
            if missing:
                await self._ack_missing(keys=[self.stream], args=[self.group, self.consumer, 1000])
            if claimed:
                taken += await self._take_over(claimed)
            if next_start == "0-0":
                break
            start = next_start
        return taken

    async def _take_over(self, claimed: list[tuple[str, dict[bytes, bytes]]]) -> int:
        self._claimed.update(eid for eid, _ in claimed)
        try:
            ids = sorted((eid for eid, _ in claimed), key=_id_key)
            info = await self._r.xpending_range(
                self.stream, self.group, ids[0], ids[-1], 10 * len(ids) + 100, consumername=self.consumer
            )
            counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in info}
            taken = 0
            for eid, fields in claimed:
                count = counts.get(eid, 2)
                RECLAIMED.labels(*self._labels).inc()
                log.warning("stream_entry_reclaimed", entry=eid, deliveries=count)
                d = self._delivery(eid, fields, count)
                if count > self.max_deliveries:
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
        removed = await self._trim(keys=[self.stream], args=[self.maxlen, 10_000])
        if removed:
            log.debug("stream_trimmed", stream=self.stream, removed=int(removed))
        for g in await self._r.xinfo_groups(self.stream):
            if _text(g["name"]) != self.group:
                continue
            last = _text(g["last-delivered-id"])
            PENDING.labels(*self._labels).set(int(g["pending"]))
            first_unread = await self._r.xrange(self.stream, min=f"({last}", count=1)
            lag = (time.time() * 1000 - _ms(_text(first_unread[0][0]))) / 1000 if first_unread else 0.0
            LAG.labels(*self._labels).set(max(lag, 0.0))
        for name in await self._gc(keys=[self.stream], args=[self.group, self.consumer, self.consumer_gc_ms]):
            log.info("stream_consumer_removed", consumer=_text(name))


class _HandOffError(Exception):
    """Redis refused a hand-off (retried: it may be transient, e.g. OOM)."""

    code = "HANDOFF_FAILED"
    retryable = True


def _reraise_if_cancelling() -> None:
    """redis-py may turn a cancellation mid-command into a connection error: keep it a cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _group_lost(exc: ResponseError) -> bool:
    """NOGROUP; or Redis 7 waking a blocked XREADGROUP whose stream was deleted (FLUSHALL)."""
    text = str(exc)
    return text.startswith(("NOGROUP", "UNBLOCKED")) or "NOGROUP" in text


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
