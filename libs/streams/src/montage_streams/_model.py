"""What flows through the stream runtime: emits, deliveries, dead letters; entry ids; failure kinds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What a call raises while Redis is unreachable (refused, reset, timed out, still loading).
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class KeyLayout(Protocol):
    """The two key names the runtime derives (Montage's ``Keys`` provides them)."""

    def delayed_zset(self, stream: str = "") -> str:
        """The sorted set of ``stream``'s entries waiting for their retry (one per hash tag)."""
        ...

    def dead_letter_stream(self, stream: str) -> str:
        """Where ``stream``'s dead letters go (same hash tag as ``stream``)."""
        ...


class Emit(msgspec.Struct, frozen=True):
    """An entry to add atomically with an ack (or on its own through ``StreamProducer``).

    Emits, deliveries and entries are frozen msgspec structs rather than dataclasses: one is made
    per entry and hop, and a frozen dataclass costs ~1 µs to construct against ~0.1 µs."""

    stream: str
    payload: bytes
    message_id: str = ""  # stable id; a new uuid when empty
    channel: str = ""  # PUBLISH "<new entry id> <payload>" here after the XADD
    sharded: bool = False  # SPUBLISH instead (Redis 7 shard channel; same hash tag as the stream)
    maxlen: int = 0  # approximate cap at XADD; 0 = none (pipeline streams use safe trimming)
    ttl_seconds: int = 0  # EXPIRE the stream key (per-job event logs)
    extra: tuple[tuple[str, str], ...] = ()


class Delivery(msgspec.Struct, frozen=True):
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

_history_decoder = msgspec.json.Decoder(list[str])


class Entry(msgspec.Struct, frozen=True):
    """A stream entry as the runtime wrote it, read outside a consumer group (logs, operators)."""

    entry_id: str
    message_id: str
    attempt: int
    payload: bytes
    history: tuple[str, ...] = ()


def _wire(entry_id: str, fields: dict[bytes, bytes]) -> tuple[str, int, bytes, tuple[str, ...]]:
    """An entry's message id, attempt, payload and history from its fields (as written by
    ``ack_emit.lua`` or ``promote.lua``): the only place that knows the wire field names (``id``,
    ``a``, ``m``, ``h``). A first attempt has no ``a`` (written without it since #27; always read as 1)."""
    raw_id = fields.get(b"id")
    raw_attempt = fields.get(b"a")
    raw_history = fields.get(b"h")
    return (
        raw_id.decode() if raw_id else entry_id,
        1 if raw_attempt is None or raw_attempt == b"1" else int(raw_attempt),
        fields.get(b"m", b""),
        tuple(_history_decoder.decode(raw_history)) if raw_history is not None else (),
    )


def decode_entry(entry_id: str, fields: dict[bytes, bytes]) -> Entry:
    """An entry read outside a consumer group."""
    return Entry(entry_id, *_wire(entry_id, fields))


def delivery(stream: str, group: str, entry_id: str, fields: dict[bytes, bytes], delivery_count: int) -> Delivery:
    """The :class:`Delivery` of an entry read in ``group``."""
    message_id, attempt, payload, history = _wire(entry_id, fields)
    return Delivery(stream, group, entry_id, message_id, attempt, delivery_count, payload, history)


def id_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a sortable pair (ms, seq)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


class HandOffError(Exception):
    """Redis refused a hand-off (retried: it may be transient, e.g. OOM)."""

    code = "HANDOFF_FAILED"
    retryable = True


def reraise_if_cancelling() -> None:
    """redis-py may turn a cancellation mid-command into a connection error: keep it a cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def group_lost(exc: ResponseError) -> bool:
    """NOGROUP; or Redis 7 waking a blocked XREADGROUP whose stream was deleted (FLUSHALL)."""
    text = str(exc)
    return text.startswith(("NOGROUP", "UNBLOCKED")) or "NOGROUP" in text
