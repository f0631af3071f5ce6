"""Looking at a consumer group from outside, and acting on its dead letters (operators' tools).

Everything here reads the runtime's own formats (the dead-letter entry written by
``StreamConsumer._dead_letter``, the delayed set's netstring members) so no caller has to know
them: :func:`consumer_stats` and :func:`oldest_pending_age` (beside ``group_stats``),
:func:`delayed_by_stream`, :func:`in_flight` and :func:`discard` (a job's messages in flight, found or removed),
:func:`dead_letters` / :func:`dead_letter`, :func:`requeue_dead_letter` (back onto the source
stream as a fresh first attempt, atomically with its removal) and :func:`delete_dead_letter`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from montage_streams._model import KeyLayout, id_ms
from montage_streams._replies import (
    consumers_reply,
    in_flight_reply,
    pending_summary_reply,
    range_reply,
    text,
)
from montage_streams._scripts import lua

_history = msgspec.json.Decoder(list[str])


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """One consumer of a group as Redis sees it."""

    name: str
    pending: int  # entries delivered to it and not yet acknowledged
    idle_ms: int  # since its last attempted interaction (read, claim, ack)
    inactive_ms: int | None  # since its last successful one (Redis 7.2+; None before)


async def consumer_stats(redis: Redis, stream: str, group: str) -> list[ConsumerStats]:
    """The consumers of ``group`` (empty when the stream or group does not exist)."""
    r: Any = redis
    try:
        rows = consumers_reply(await r.xinfo_consumers(stream, group))
    except ResponseError:  # no such stream or group yet
        return []
    return [ConsumerStats(c.name, c.pending, c.idle_ms, c.inactive_ms) for c in rows]


async def oldest_pending_age(redis: Redis, stream: str, group: str) -> float | None:
    """Seconds since the oldest in-flight entry of ``group`` was added (None when nothing is in flight)."""
    r: Any = redis
    try:
        summary = pending_summary_reply(await r.xpending(stream, group))
    except ResponseError:
        return None
    if not summary.lowest:
        return None
    return max(time.time() - id_ms(summary.lowest) / 1000, 0.0)


def _netstrings(member: bytes) -> list[bytes]:
    parts: list[bytes] = []
    i = 0
    for _ in range(10_000):
        if i >= len(member):
            break
        colon = member.index(b":", i)
        n = int(member[i:colon])
        parts.append(member[colon + 1 : colon + 1 + n])
        i = colon + 1 + n
    return parts


def delayed_stream(member: bytes) -> str:
    """The stream a delayed-set member goes back to (netstrings, or the older JSON form)."""
    if member.startswith(b"{"):
        return str(msgspec.json.decode(member).get("s", ""))
    parts = _netstrings(member)
    return parts[0].decode() if parts else ""


async def delayed_by_stream(redis: Redis, keys: KeyLayout, *, limit: int = 10_000, stream: str = "") -> dict[str, int]:
    """Retries waiting for their backoff, per stream (the first ``limit`` members of the set of
    ``stream``'s hash tag; the layout's default set when empty)."""
    r: Any = redis
    out: dict[str, int] = {}
    for member in await r.zrange(keys.delayed_zset(stream), 0, limit - 1):
        raw = member if isinstance(member, bytes) else str(member).encode()
        name = delayed_stream(raw)
        out[name] = out.get(name, 0) + 1
    return out


async def in_flight(
    redis: Redis,
    sources: Sequence[tuple[str, str]],
    delayed_zset: str,
    prefixes: Iterable[str],
    *,
    separator: str = ":",
    limit: int = 10_000,
) -> set[str] | None:
    """Which ``prefixes`` have a message in flight in ``sources`` (``(stream, group)`` pairs) or the
    delayed set: not yet read by the group, read and not acknowledged, or waiting for a retry.

    A message's prefix is its message id up to the first ``separator``. Looked at in one script,
    so an entry moving from one place to the next (read, retried, handed off to the next stream
    of ``sources``) is always seen; every key must share one hash tag. ``None`` when a scan
    stopped at ``limit`` entries (a backlog that long: the caller cannot tell).
    """
    wanted = sorted(set(prefixes))
    if not wanted:
        return set()
    r: Any = redis
    keys = [s for s, _ in sources] + [delayed_zset]
    args: list[Any] = [limit, separator, len(sources), *(g for _, g in sources), *wanted]
    reply = in_flight_reply(await r.eval(lua("in_flight"), len(keys), *keys, *args))
    return reply.found if reply.complete else None


async def discard(
    redis: Redis,
    sources: Sequence[tuple[str, str]],
    delayed_zset: str,
    prefixes: Iterable[str],
    *,
    separator: str = ":",
    limit: int = 10_000,
    rounds: int = 10,
) -> int:
    """Remove every message of ``prefixes`` in flight in ``sources`` (``(stream, group)`` pairs) or
    waiting for a retry of one of those streams in the delayed set: what :func:`in_flight` would
    find. Returns how many entries were removed.

    Each call of the script is atomic; a consumer running a removed entry finds it gone at its
    hand-off (which then emits nothing) and at its next renewal. A scan that stopped at ``limit``
    entries is run again, at most ``rounds`` times. Every key must share one hash tag.
    """
    wanted = sorted(set(prefixes))
    if not wanted:
        return 0
    r: Any = redis
    keys = [s for s, _ in sources] + [delayed_zset]
    args: list[Any] = [limit, separator, len(sources), *(g for _, g in sources), *wanted]
    removed = 0
    for _ in range(max(rounds, 1)):
        reply = await r.eval(lua("discard"), len(keys), *keys, *args)
        complete, count = int(reply[0]), int(reply[1])
        removed += count
        if complete or not count:
            break
    return removed


class DeadLetterEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of ``<stream>:dead`` as the runtime wrote it."""

    stream: str  # the source stream
    entry_id: str  # its id in the dead-letter stream
    message_id: str  # stable id of the message across retries
    source_entry: str  # its last id in the source stream
    code: str
    error: str
    history: list[str]  # one line per attempt, oldest first
    attempts: int  # attempts made (= lines of history)
    dead_at_ms: int
    payload: bytes


def _entry(stream: str, eid: str, fields: dict[bytes, bytes]) -> DeadLetterEntry:
    history: list[str] = []
    if raw := fields.get(b"history"):
        try:
            history = _history.decode(raw)
        except msgspec.DecodeError:
            history = [raw.decode(errors="replace")]
    return DeadLetterEntry(
        stream=stream,
        entry_id=eid,
        message_id=fields.get(b"id", b"").decode(errors="replace") or eid,
        source_entry=fields.get(b"source", b"").decode(errors="replace"),
        code=fields.get(b"code", b"").decode(errors="replace"),
        error=fields.get(b"error", b"").decode(errors="replace"),
        history=history,
        attempts=max(len(history), 1),
        dead_at_ms=id_ms(eid),
        payload=fields.get(b"m", b""),
    )


async def dead_letters(
    redis: Redis,
    keys: KeyLayout,
    stream: str,
    *,
    count: int = 50,
    before: str | None = None,
    oldest_first: bool = False,
) -> list[DeadLetterEntry]:
    """Up to ``count`` dead letters of ``stream``, newest first (or oldest first); ``before`` pages."""
    r: Any = redis
    dead = keys.dead_letter_stream(stream)
    if oldest_first:
        rows = await r.xrange(dead, min=f"({before}" if before else "-", count=count)
    else:
        rows = await r.xrevrange(dead, max=f"({before}" if before else "+", count=count)
    return [_entry(stream, e.entry_id, e.fields) for e in range_reply(rows) if e.fields]


async def dead_letter(redis: Redis, keys: KeyLayout, stream: str, entry_id: str) -> DeadLetterEntry | None:
    """One dead letter by its id in the dead-letter stream, or None."""
    r: Any = redis
    rows = range_reply(await r.xrange(keys.dead_letter_stream(stream), min=entry_id, max=entry_id, count=1))
    return _entry(stream, rows[0].entry_id, rows[0].fields) if rows and rows[0].fields else None


# Move a dead letter back onto its stream as a first attempt (same message id and payload, no
# history), and remove it, in one step. KEYS: dead-letter stream, source stream. ARGV: entry id.
# Returns the new entry id, or false when the dead letter is gone.
_REQUEUE = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #rows == 0 then return false end
local f = rows[1][2]
local id, m = nil, nil
for i = 1, #f, 2 do
  if f[i] == 'id' then id = f[i+1] elseif f[i] == 'm' then m = f[i+1] end
end
if m == nil then return false end
local new = redis.call('XADD', KEYS[2], '*', 'id', id or ARGV[1], 'm', m)
redis.call('XDEL', KEYS[1], ARGV[1])
return new
"""


async def requeue_dead_letter(redis: Redis, keys: KeyLayout, stream: str, entry_id: str) -> str | None:
    """Put a dead letter back on ``stream`` (a fresh first attempt) and remove it; None if it is gone."""
    r: Any = redis
    new = await r.eval(_REQUEUE, 2, keys.dead_letter_stream(stream), stream, entry_id)
    return text(new) if new else None


async def delete_dead_letter(redis: Redis, keys: KeyLayout, stream: str, entry_id: str) -> bool:
    """Remove one dead letter; False if it was already gone."""
    r: Any = redis
    return bool(await r.xdel(keys.dead_letter_stream(stream), entry_id))
