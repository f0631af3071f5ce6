"""One log per user of every event of the user's jobs (``GET /api/v1/events``, docs/sse.md).

A job's events are logged in the job's own stream, in the job's partition (``montage_common.events``),
atomically with the pipeline's hand-offs; a user's jobs are spread over the partitions, and on a
cluster a script cannot write two slots. So the user's log is a **copy**, made by a relay after
the fact, in a slot of the user's own:

- **Keys.** ``{<namespace>:user:<id>}:events`` (the log, a stream), ``…:event_cursors`` (a hash:
  job id → the last entry of that job's log already copied) and the live channel ``…:events:live``.
  One hash tag per user: the copy script touches one slot, and users spread over a cluster's nodes.
- **The copy** (:func:`relay`): read the cursor, read the job's log after it, then one script in
  the user's slot appends each entry newer than the cursor (``XADD … MAXLEN ~``), publishes it
  (``SPUBLISH`` on a cluster) and moves the cursor. Running it twice, or two replicas at once,
  copies nothing twice; a copy that dies half way is finished by the next one. Each entry keeps
  its job's id and its job-log id; per job the order is the job log's.
- **Who copies.** The orchestrator, right after it hands off a job's events (the pipeline's
  hand-off, the outbox), and a periodic sweep of its recent jobs that finishes a copy a crash
  interrupted (``montage_orchestrator.user_events``).
- **Trimming.** ``MAXLEN ~ USER_LOG_MAXLEN`` (10 000 entries: a hundred jobs' worth) at each append,
  and a TTL (``USER_LOG_TTL_SECONDS``, 24 h, as a job's log) refreshed by each append on the log and
  the cursors: a user idle for a day has no log. A resume point older than what is kept replays
  what is left.

An entry's fields: ``j`` (the job id), ``e`` (its id in the job's log) and ``m`` (the job log's
payload, ``{"event", "data"}``). The channel carries ``"<user entry id> <job id> <payload>"``. On
the wire the job id is the first field of each event's ``data``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import msgspec
from montage_contracts.events import JobEvent, decode_event, encode_data, event_name
from montage_contracts.keys import Keys
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

__all__ = [
    "USER_LOG_MAXLEN",
    "USER_LOG_TTL_SECONDS",
    "UserEvent",
    "UserLog",
    "last_user_event",
    "parse_user_published",
    "render_user_event",
    "replay_user",
]

USER_LOG_MAXLEN = 10_000
USER_LOG_TTL_SECONDS = 24 * 3600
CURSORS_KEPT = 50_000  # jobs whose last copied entry one process remembers

# KEYS: the user's log, its cursors. ARGV: job id, maxlen, ttl, channel ('' = none), sharded
# ('1': SPUBLISH), then per entry of the job's log (oldest first): its id, its payload.
# Appends the entries newer than the job's cursor; returns how many.
_COPY = """
local function newer(a, b)
  if not b then return true end
  local da, db = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  local ma, mb = tonumber(string.sub(a, 1, da - 1)), tonumber(string.sub(b, 1, db - 1))
  if ma ~= mb then return ma > mb end
  return tonumber(string.sub(a, da + 1)) > tonumber(string.sub(b, db + 1))
end
local job = ARGV[1]
local cursor = redis.call('HGET', KEYS[2], job)
if cursor == false then cursor = nil end
local added = 0
for i = 6, #ARGV, 2 do
  local id, payload = ARGV[i], ARGV[i + 1]
  if newer(id, cursor) then
    local uid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'j', job, 'e', id, 'm', payload)
    if ARGV[4] ~= '' then
      redis.call(ARGV[5] == '1' and 'SPUBLISH' or 'PUBLISH', ARGV[4], uid .. ' ' .. job .. ' ' .. payload)
    end
    cursor = id
    added = added + 1
  end
end
if added > 0 then redis.call('HSET', KEYS[2], job, cursor) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return added
"""


class UserEvent(msgspec.Struct, frozen=True):
    """One entry of a user's log: its id there, its job, and the job's event."""

    entry_id: str
    job_id: str
    event: JobEvent


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class UserLog:
    """The copy from jobs' logs into their users' logs (one instance per process).

    Each copy reads the job's log after a cursor, then runs the copy script, which appends only
    what is newer than the cursor kept in Redis. The process remembers, per job, the last entry
    it read and saw copied, and starts the next read there (no read of the cursor first): an
    entry another replica copied meanwhile is read again and skipped by the script, so the
    remembered cursor only saves a round trip. :meth:`relay_many` with ``fresh=True`` (the
    periodic sweep) reads the cursors kept in Redis instead, so a copy Redis lost is made again.
    Copies of many jobs go in two pipelined round trips (their reads, then their scripts).
    """

    def __init__(self, redis: Redis, keys: Keys, *, maxlen: int = USER_LOG_MAXLEN, ttl: int = USER_LOG_TTL_SECONDS):
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.ttl = ttl
        self._copy: Any = redis.register_script(_COPY)
        self._read: OrderedDict[str, str] = OrderedDict()  # job id -> its last entry read and copied
        self._cluster = isinstance(redis, RedisCluster)

    async def relay(self, user_id: str, job_id: str) -> int:
        """Copy the job's logged events the user's log does not have yet; how many were copied."""
        return await self.relay_many([(user_id, job_id)], fresh=True)

    async def relay_many(self, jobs: Sequence[tuple[str, str]], *, fresh: bool = False) -> int:
        """:meth:`relay` for each ``(user id, job id)``; how many events were copied in all. A job
        whose read or copy failed is logged in no cursor (its next copy reads from where it was);
        the first such error is raised after the others were copied."""
        pairs = list(dict.fromkeys(jobs))
        if not pairs:
            return 0
        r: Any = self.redis
        starts: dict[str, str | None] = {}
        unknown = [(u, j) for u, j in pairs if fresh or j not in self._read]
        if unknown:
            pipe = r.pipeline(transaction=False)
            for u, j in unknown:
                pipe.hget(self.keys.user_event_cursors(u), j)
            for (_, j), cursor in zip(unknown, await pipe.execute(), strict=True):
                starts[j] = _text(cursor) if cursor else None
        pipe = r.pipeline(transaction=False)
        for _, j in pairs:
            start = starts[j] if j in starts else self._read.get(j)
            pipe.xrange(self.keys.job_events_stream(j), min=f"({start}" if start else "-", max="+")
        logs = await pipe.execute(raise_on_error=False)
        copies: list[tuple[str, list[str], list[Any]]] = []
        failed: BaseException | None = None
        for (u, j), entries in zip(pairs, logs, strict=True):
            if isinstance(entries, BaseException):
                failed = failed or entries
                continue
            args = self._copy_args(u, j, entries)
            if args is not None:
                copies.append((j, [self.keys.user_events_stream(u), self.keys.user_event_cursors(u)], args))
        copied = 0
        for (j, _, args), res in zip(copies, await self._run_copies(copies), strict=True):
            if isinstance(res, BaseException):
                failed = failed or res
                self._read.pop(j, None)
                continue
            copied += int(res)
            self._read[j] = args[-2]  # the last entry read: copied now, or before
            self._read.move_to_end(j)
        while len(self._read) > CURSORS_KEPT:
            self._read.popitem(last=False)
        if failed is not None:
            raise failed
        return copied

    def _copy_args(self, user_id: str, job_id: str, entries: Any) -> list[Any] | None:
        """The copy script's ARGV for a job's entries (``None``: nothing to copy)."""
        args: list[Any] = [
            job_id,
            self.maxlen,
            self.ttl,
            self.keys.user_events_channel(user_id),
            "1" if self.keys.sharded_events else "0",
        ]
        for entry_id, fields in entries or ():
            payload = fields.get(b"m") if isinstance(fields, dict) else None
            if payload is not None:
                args.extend((_text(entry_id), payload))
        return args if len(args) > 5 else None

    async def _run_copies(self, copies: Sequence[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """The copy scripts' replies (an exception in place of a failed one): one pipeline, or on a
        cluster (whose pipelines do not load scripts) one call each, at once."""
        if not copies:
            return []
        if self._cluster:
            calls = (self._copy(keys=keys, args=args) for _, keys, args in copies)
            return list(await asyncio.gather(*calls, return_exceptions=True))
        replies = await self._pipelined(copies)
        if any(isinstance(x, NoScriptError) for x in replies):  # a restarted Redis: load it, run again
            await self.redis.script_load(_COPY)  # (the script copies nothing twice)
            replies = await self._pipelined(copies)
        return replies

    async def _pipelined(self, copies: Sequence[tuple[str, list[str], list[Any]]]) -> list[Any]:
        pipe: Any = self.redis.pipeline(transaction=False)
        for _, keys, args in copies:
            pipe.evalsha(self._copy.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def forget_job(self, user_id: str, job_id: str) -> int:
        """Delete one job's entries from the user's log and its cursor (a deleted job); how many."""
        r: Any = self.redis
        ids = [e.entry_id for e in await replay_user(self.redis, self.keys, user_id) if e.job_id == job_id]
        if ids:
            await r.xdel(self.keys.user_events_stream(user_id), *ids)
        await r.hdel(self.keys.user_event_cursors(user_id), job_id)
        self._read.pop(job_id, None)
        return len(ids)


def _decode(entry_id: Any, fields: Any) -> UserEvent | None:
    try:
        job = fields[b"j"]
        payload = fields[b"m"]
        return UserEvent(_text(entry_id), _text(job), decode_event(payload))
    except (KeyError, TypeError, msgspec.DecodeError, msgspec.ValidationError):
        return None  # not an entry this code wrote, or an event it does not know: skipped


async def replay_user(redis: Redis, keys: Keys, user_id: str, after: str = "0-0") -> list[UserEvent]:
    """The user's logged events after ``after`` (exclusive), oldest first."""
    r: Any = redis
    out: list[UserEvent] = []
    start = f"({after}"
    while True:
        batch = await r.xrange(keys.user_events_stream(user_id), min=start, max="+", count=1000)
        for entry_id, fields in batch:
            ev = _decode(entry_id, fields)
            if ev is not None:
                out.append(ev)
        if len(batch) < 1000:
            return out
        start = f"({_text(batch[-1][0])}"


async def last_user_event(redis: Redis, keys: Keys, user_id: str) -> str | None:
    """The id of the newest entry of the user's log (``None`` when it is empty or gone)."""
    r: Any = redis
    found = await r.xrevrange(keys.user_events_stream(user_id), count=1)
    return _text(found[0][0]) if found else None


def parse_user_published(message: bytes) -> UserEvent:
    """``b"<id> <job id> <payload>"`` from the user's channel."""
    entry_id, _, rest = message.partition(b" ")
    job_id, _, payload = rest.partition(b" ")
    return UserEvent(entry_id.decode(), job_id.decode(), decode_event(payload))


_json = msgspec.json.Encoder()


def render_user_event(ev: UserEvent) -> bytes:
    """One SSE message of the user stream: the job stream's message, ``job_id`` first in its data."""
    data = encode_data(ev.event.data)
    head = b'{"job_id":' + _json.encode(ev.job_id)
    body = head + b"}" if data == b"{}" else head + b"," + data[1:]
    return f"event: {event_name(ev.event.data)}\nid: {ev.entry_id}\n".encode() + b"data: " + body + b"\n\n"
