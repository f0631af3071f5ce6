"""Reading a stream's entries outside any consumer group (event logs, operator views)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from montage_streams._model import Entry, decode_entry
from montage_streams._replies import range_reply

PAGE = 500


async def read_range(redis: Redis, stream: str, *, after: str = "0-0", limit: int = 100_000) -> list[Entry]:
    """The entries after ``after`` (exclusive), oldest first, at most ``limit`` of them."""
    r: Any = redis
    out: list[Entry] = []
    start = f"({after}"
    while len(out) < limit:
        batch = range_reply(await r.xrange(stream, min=start, count=min(PAGE, limit - len(out))))
        out.extend(decode_entry(e.entry_id, e.fields or {}) for e in batch)
        if len(batch) < PAGE:
            break
        start = f"({out[-1].entry_id}"
    return out


async def read_last(redis: Redis, stream: str) -> Entry | None:
    """The newest entry, or ``None`` when the stream is empty or gone."""
    r: Any = redis
    found = range_reply(await r.xrevrange(stream, count=1))
    return decode_entry(found[0].entry_id, found[0].fields or {}) if found else None


async def read_one(redis: Redis, stream: str, entry_id: str) -> Entry | None:
    """One entry by id, or ``None`` when it does not exist (any more)."""
    r: Any = redis
    found = range_reply(await r.xrange(stream, min=entry_id, max=entry_id, count=1))
    return decode_entry(found[0].entry_id, found[0].fields or {}) if found else None
