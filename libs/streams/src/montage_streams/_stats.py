"""What one consumer group of one stream holds right now: the one home of group statistics.

Used by the runtime's own gauges, the orchestrator's health report and metrics, and the
operator views (``montage queues``, the admin console).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from montage_streams._model import id_ms
from montage_streams._replies import groups_reply, range_reply


@dataclass(frozen=True, slots=True)
class GroupStats:
    stream: str
    group: str
    length: int  # entries in the stream (read or not, until trimmed)
    pending: int  # delivered to a consumer, not yet acknowledged (in flight)
    lag: int | None  # entries the group has not read yet (None: Redis could not tell)
    consumers: int  # consumers registered in the group
    dead_letters: int  # entries in the stream's dead-letter stream
    oldest_unread_age: float  # seconds since the oldest unread entry was added (0 when none)
    exists: bool = True  # False: neither the stream nor the group exists yet

    @property
    def waiting(self) -> int:
        """Entries not yet read by the group (the stream length when Redis reports no lag)."""
        return self.lag if self.lag is not None else self.length

    @property
    def backlog(self) -> int:
        """The work the group still has to finish: waiting plus in flight."""
        return self.waiting + self.pending

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "waiting": self.waiting, "backlog": self.backlog}


async def group_stats(redis: Redis, stream: str, group: str, *, dead_letter_stream: str = "") -> GroupStats:
    """The statistics of ``group`` on ``stream`` (three to five round trips; read-only)."""
    r: Any = redis
    length = int(await r.xlen(stream))
    dead = int(await r.xlen(dead_letter_stream)) if dead_letter_stream else 0
    try:
        groups = groups_reply(await r.xinfo_groups(stream))
    except ResponseError:  # no such stream yet
        groups = []
    for g in groups:
        if g.name != group:
            continue
        first_unread = range_reply(await r.xrange(stream, min=f"({g.last_delivered_id}", count=1))
        age = (time.time() * 1000 - id_ms(first_unread[0].entry_id)) / 1000 if first_unread else 0.0
        return GroupStats(
            stream=stream,
            group=group,
            length=length,
            pending=g.pending,
            lag=g.lag,
            consumers=g.consumers,
            dead_letters=dead,
            oldest_unread_age=max(age, 0.0),
        )
    return GroupStats(stream, group, length, 0, length, 0, dead, 0.0, exists=False)
