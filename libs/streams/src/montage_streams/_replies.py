"""Redis replies as typed values: the one place that knows the shape of each reply.

redis-py parses some stream replies itself (lists of pairs, dicts with byte or text keys,
RESP2 or RESP3 shapes, differing between Redis 6.2 and 7); the Lua scripts return raw RESP.
Every reply the runtime reads goes through one function here, and the rest of the package
works with the values it returns instead of indexing into replies:

- ``XREADGROUP`` / ``XREAD`` / ``XRANGE``: :class:`StreamEntry` lists (:func:`read_reply`,
  :func:`read_reply_by_stream`, :func:`range_reply`);
- ``XAUTOCLAIM``: :class:`AutoClaim`; ``XPENDING`` summary and extended form:
  :class:`PendingSummary`, :class:`PendingEntry`;
- ``XINFO GROUPS`` / ``XINFO CONSUMERS``: :class:`GroupInfo`, :class:`ConsumerInfo`;
- the scripts: :class:`HandOffReply` (``ack_emit.lua``), :func:`names_reply`
  (``gc_consumers.lua``), :class:`InFlightReply` (``in_flight.lua``), :func:`count_reply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

Fields = dict[bytes, bytes]


def text(value: Any) -> str:
    """A reply value as text (bytes are UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any, default: int = 0) -> int:
    return default if value is None else int(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _kv(raw: Any) -> dict[str, Any]:
    """A map reply (a dict, or a flat list of name, value pairs) with text keys."""
    if isinstance(raw, Mapping):
        return {text(k): v for k, v in raw.items()}
    return {text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}


def _fields(raw: Any) -> Fields | None:
    """An entry's fields: a dict (redis-py parsed) or a flat list (raw, from a script)."""
    if not raw:
        return None
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


class StreamEntry(NamedTuple):
    """One stream entry as read. ``fields`` is ``None`` when the entry no longer exists (it was
    deleted or trimmed while pending: Redis still lists its id in the pending history)."""

    entry_id: str
    fields: Fields | None


def _entries(items: Any) -> list[StreamEntry]:
    out: list[StreamEntry] = []
    for item in items or ():
        if item is None or item[0] is None:  # Redis 6.2: a deleted entry without its id
            continue
        out.append(StreamEntry(text(item[0]), _fields(item[1])))
    return out


def read_reply_by_stream(resp: Any) -> dict[str, list[StreamEntry]]:
    """``XREADGROUP`` / ``XREAD`` (RESP2 list of ``[stream, entries]`` or RESP3 map; ``None``
    when a blocking read timed out) as entries per stream, in reply order."""
    if not resp:
        return {}
    pairs = resp.items() if isinstance(resp, Mapping) else resp
    out: dict[str, list[StreamEntry]] = {}
    for stream, items in pairs:
        # redis-py's RESP3 parser wraps each stream's entries in one more list
        wrapped = items and isinstance(items[0], list) and items[0] and isinstance(items[0][0], tuple | list)
        out[text(stream)] = _entries(items[0] if wrapped else items)
    return out


def read_reply(resp: Any) -> list[StreamEntry]:
    """The entries of an ``XREADGROUP`` of one stream (empty when nothing came)."""
    if not resp:
        return []
    if not isinstance(resp, Mapping) and len(resp) == 1:  # the common case: skip the dict
        return _entries(resp[0][1])
    return [e for entries in read_reply_by_stream(resp).values() for e in entries]


def range_reply(resp: Any) -> list[StreamEntry]:
    """``XRANGE`` / ``XREVRANGE``: the entries, in reply order."""
    return _entries(resp)


class AutoClaim(NamedTuple):
    """``XAUTOCLAIM``: where the next scan starts, the entries claimed, and the ids of claimed
    entries that no longer exist (Redis 7 lists them; Redis 6.2 only claims them, so
    ``missing`` counts entries it returned without id or fields)."""

    next_start: str
    entries: list[StreamEntry]
    deleted: list[str]
    missing: int

    @property
    def done(self) -> bool:
        """The scan went through the whole pending list."""
        return self.next_start == "0-0"


def autoclaim_reply(resp: Any) -> AutoClaim:
    entries: list[StreamEntry] = []
    missing = 0
    for item in resp[1] or ():
        if item is None or item[0] is None or not item[1]:
            missing += 1
            continue
        entries.append(StreamEntry(text(item[0]), _fields(item[1])))
    deleted = [text(i) for i in resp[2]] if len(resp) > 2 and resp[2] else []
    return AutoClaim(text(resp[0]), entries, deleted, missing + len(deleted))


class PendingEntry(NamedTuple):
    """One row of the extended ``XPENDING``."""

    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


def pending_range_reply(resp: Any) -> list[PendingEntry]:
    """Extended ``XPENDING`` (redis-py's dicts, or raw ``[id, consumer, idle, count]`` rows)."""
    out: list[PendingEntry] = []
    for row in resp or ():
        if isinstance(row, Mapping):
            out.append(PendingEntry(text(row["message_id"]), text(row["consumer"]),
                                    int(row["time_since_delivered"]), int(row["times_delivered"])))  # fmt: skip
        else:
            out.append(PendingEntry(text(row[0]), text(row[1]), int(row[2]), int(row[3])))
    return out


class PendingSummary(NamedTuple):
    """The summary form of ``XPENDING``: how many, the lowest and highest id, per consumer."""

    total: int
    lowest: str | None
    highest: str | None
    consumers: dict[str, int]


def pending_summary_reply(resp: Any) -> PendingSummary:
    if isinstance(resp, Mapping):  # redis-py: pending, min, max, consumers [{name, pending}]
        raw = {text(k): v for k, v in resp.items()}
        per = {text(c["name"]): int(c["pending"]) for c in raw.get("consumers") or ()}
        lo, hi = raw.get("min"), raw.get("max")
        return PendingSummary(int(raw.get("pending") or 0), text(lo) if lo else None, text(hi) if hi else None, per)
    count, lo, hi, consumers = resp
    per = {text(name): int(n) for name, n in consumers or ()}
    return PendingSummary(int(count or 0), text(lo) if lo else None, text(hi) if hi else None, per)


class GroupInfo(NamedTuple):
    """One row of ``XINFO GROUPS``. ``entries_read`` and ``lag`` exist from Redis 7.0 (``None``
    before, and ``lag`` is ``None`` too when Redis cannot tell)."""

    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    entries_read: int | None
    lag: int | None


def groups_reply(resp: Any) -> list[GroupInfo]:
    out: list[GroupInfo] = []
    for raw in resp or ():
        g = _kv(raw)
        out.append(
            GroupInfo(
                name=text(g.get("name", b"")),
                consumers=_int(g.get("consumers")),
                pending=_int(g.get("pending")),
                last_delivered_id=text(g.get("last-delivered-id") or b"0-0"),
                entries_read=_opt_int(g.get("entries-read")),
                lag=_opt_int(g.get("lag")),
            )
        )
    return out


class ConsumerInfo(NamedTuple):
    """One row of ``XINFO CONSUMERS``. ``inactive_ms`` exists from Redis 7.2 (``None`` before,
    and while the consumer has never succeeded at anything)."""

    name: str
    pending: int  # entries delivered to it and not yet acknowledged
    idle_ms: int  # since its last attempted interaction (read, claim, ack)
    inactive_ms: int | None  # since its last successful one


def consumers_reply(resp: Any) -> list[ConsumerInfo]:
    out: list[ConsumerInfo] = []
    for raw in resp or ():
        c = _kv(raw)
        inactive = _opt_int(c.get("inactive"))
        if inactive is not None and inactive < 0:  # never succeeded
            inactive = None
        out.append(ConsumerInfo(text(c.get("name", b"")), _int(c.get("pending")), _int(c.get("idle")), inactive))
    return out


class HandOffReply(NamedTuple):
    """``ack_emit.lua``: per source entry the ids of its new entries, or ``None`` when the claim
    was lost (nothing written, nothing acked); then the entries the script fetched."""

    ids: list[list[str] | None]
    fetched: list[StreamEntry]

    @property
    def owned(self) -> list[bool]:
        return [ids is not None for ids in self.ids]


def hand_off_reply(res: Any, n_entries: int) -> HandOffReply:
    """Also the reply of a call that asked for no ids (1 per handed-off entry: no ids listed)."""
    ids = [None if r is None else [] if isinstance(r, int) else [text(i) for i in r] for r in res[:n_entries]]
    fetched: list[StreamEntry] = []
    if len(res) > n_entries and res[n_entries]:
        for raw_id, flat in res[n_entries]:  # the script returns the fetched entries, flat
            fetched.append(StreamEntry(text(raw_id), _fields(flat)))
    return HandOffReply(ids, fetched)


def names_reply(res: Any) -> list[str]:
    """A list of names (``gc_consumers.lua``: the consumers it removed)."""
    return [text(n) for n in res or ()]


def count_reply(res: Any) -> int:
    """An integer reply (``renew``, ``release``, ``promote``, ``trim``, ``ack_missing``)."""
    return int(res or 0)


class InFlightReply(NamedTuple):
    """``in_flight.lua``: whether every scan was complete, and the prefixes found in flight."""

    complete: bool
    found: set[str]


def in_flight_reply(res: Any) -> InFlightReply:
    return InFlightReply(bool(int(res[0])), {text(p) for p in res[1:]})
