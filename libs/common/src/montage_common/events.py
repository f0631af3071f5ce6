"""Job events for the SSE stream: one durable log per job plus a live pub/sub notification.

The orchestrator appends each event with :func:`event_emit`, atomically with whatever else it
hands off (see :class:`~montage_streams.Emit`): an ``XADD`` to the job's event stream,
whose entry id becomes the SSE ``id:``, and a ``PUBLISH`` of ``"<id> <json>"`` on the job's
channel. The events and their payloads are :mod:`montage_contracts.events`. A gateway subscribes to the channel for live delivery and reads the stream with
:func:`replay` for what a reconnecting client missed (``Last-Event-ID``).
"""

from __future__ import annotations

from montage_contracts.events import EventData, JobEvent, decode_event, encode_event
from montage_contracts.keys import Keys
from montage_streams import Emit, id_key, read_last, read_range
from redis.asyncio import Redis

__all__ = [
    "EVENT_LOG_MAXLEN",
    "EVENT_LOG_TTL_SECONDS",
    "event_emit",
    "id_key",
    "last_event",
    "parse_published",
    "replay",
    "valid_event_id",
    "withdraw_final_events",
]

EVENT_LOG_TTL_SECONDS = 24 * 3600  # refreshed on every event; the log outlives its job by a day
EVENT_LOG_MAXLEN = 5000


def event_emit(keys: Keys, job_id: str, data: EventData) -> Emit:
    """The :class:`Emit` that appends and publishes one event of ``job_id`` (its name is its
    payload's type: :func:`montage_contracts.events.event_name`)."""
    payload = encode_event(data)
    return Emit(
        keys.job_events_stream(job_id),
        payload,
        channel=keys.job_events_channel(job_id),
        sharded=keys.sharded_events,
        maxlen=EVENT_LOG_MAXLEN,
        ttl_seconds=EVENT_LOG_TTL_SECONDS,
    )


def parse_published(message: bytes) -> tuple[str, JobEvent]:
    """``b"<id> <json>"`` from the channel → ``(id, event)``."""
    entry_id, _, payload = message.partition(b" ")
    return entry_id.decode(), decode_event(payload)


async def last_event(redis: Redis, keys: Keys, job_id: str) -> tuple[str, JobEvent] | None:
    """The newest logged event of the job (``None`` when its log is empty or gone)."""
    entry = await read_last(redis, keys.job_events_stream(job_id))
    return None if entry is None else (entry.entry_id, decode_event(entry.payload))


_U64 = 2**64 - 1


def valid_event_id(value: str) -> bool:
    """A stream entry id Redis accepts: ``<ms>-<seq>``, ASCII digits, each part a 64-bit integer."""
    ms, sep, seq = value.partition("-")
    return (
        bool(sep)
        and len(value) <= 41
        and value.isascii()
        and ms.isdigit()
        and seq.isdigit()
        and int(ms) <= _U64
        and int(seq) <= _U64
    )


async def replay(redis: Redis, keys: Keys, job_id: str, after: str = "0-0") -> list[tuple[str, JobEvent]]:
    """Every logged event of the job after entry id ``after`` (exclusive), oldest first."""
    entries = await read_range(redis, keys.job_events_stream(job_id), after=after, limit=EVENT_LOG_MAXLEN * 2)
    return [(e.entry_id, decode_event(e.payload)) for e in entries]


async def withdraw_final_events(redis: Redis, keys: Keys, job_id: str) -> list[str]:
    """Delete the job's logged final events; returns their ids.

    For a job an operator re-opens (a failed job whose dead-lettered stage is retried): its log
    must read as one history with one end, or a client replaying it (``Last-Event-ID: 0-0``)
    stops at the earlier ``error``. Postgres keeps the failure (the job's errors and the
    operator's action), and the retry itself is logged as a ``message`` event.
    """
    ids = [entry_id for entry_id, event in await replay(redis, keys, job_id) if event.final]
    if ids:
        await redis.xdel(keys.job_events_stream(job_id), *ids)
    return ids
