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

from typing import Any

import msgspec
from montage_contracts.events import JobEvent, decode_event, encode_data, event_name
from montage_contracts.keys import Keys
from redis.asyncio import Redis

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
    """The copy from jobs' logs into their users' logs (one instance per process)."""

    def __init__(self, redis: Redis, keys: Keys, *, maxlen: int = USER_LOG_MAXLEN, ttl: int = USER_LOG_TTL_SECONDS):
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self.ttl = ttl
        self._copy: Any = redis.register_script(_COPY)

    async def relay(self, user_id: str, job_id: str) -> int:
        """Copy the job's logged events the user's log does not have yet; how many were copied."""
        r: Any = self.redis
        cursor = await r.hget(self.keys.user_event_cursors(user_id), job_id)
        start = f"({_text(cursor)}" if cursor else "-"
        entries = await r.xrange(self.keys.job_events_stream(job_id), min=start, max="+")
        if not entries:
            return 0
        args: list[Any] = [
            job_id,
            self.maxlen,
            self.ttl,
            self.keys.user_events_channel(user_id),
            "1" if self.keys.sharded_events else "0",
        ]
        for entry_id, fields in entries:
            payload = fields.get(b"m") if isinstance(fields, dict) else None
            if payload is None:
                continue
            args.extend((_text(entry_id), payload))
        if len(args) == 5:
            return 0
        keys = [self.keys.user_events_stream(user_id), self.keys.user_event_cursors(user_id)]
        return int(await self._copy(keys=keys, args=args))

    async def forget_job(self, user_id: str, job_id: str) -> int:
        """Delete one job's entries from the user's log and its cursor (a deleted job); how many."""
        r: Any = self.redis
        ids = [e.entry_id for e in await replay_user(self.redis, self.keys, user_id) if e.job_id == job_id]
        if ids:
            await r.xdel(self.keys.user_events_stream(user_id), *ids)
        await r.hdel(self.keys.user_event_cursors(user_id), job_id)
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
