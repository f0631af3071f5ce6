"""Reading a stream's entries outside any consumer group (event logs, operator views)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from montage_streams._model import Entry, decode_entry, text

PAGE = 500


async def read_range(redis: Redis, stream: str, *, after: str = "0-0", limit: int = 100_000) -> list[Entry]:
    """The entries after ``after`` (exclusive), oldest first, at most ``limit`` of them."""
    r: Any = redis
    out: list[Entry] = []
    start = f"({after}"
    while len(out) < limit:
        batch: list[Any] = await r.xrange(stream, min=start, count=min(PAGE, limit - len(out)))
        out.extend(decode_entry(text(raw_id), fields) for raw_id, fields in batch)
        if len(batch) < PAGE:
            break
        start = f"({out[-1].entry_id}"
    return out


async def read_last(redis: Redis, stream: str) -> Entry | None:
    """The newest entry, or ``None`` when the stream is empty or gone."""
    r: Any = redis
    found: list[Any] = await r.xrevrange(stream, count=1)
    return decode_entry(text(found[0][0]), found[0][1]) if found else None


async def read_one(redis: Redis, stream: str, entry_id: str) -> Entry | None:
    """One entry by id, or ``None`` when it does not exist (any more)."""
    r: Any = redis
    found: list[Any] = await r.xrange(stream, min=entry_id, max=entry_id, count=1)
    return decode_entry(text(found[0][0]), found[0][1]) if found else None
