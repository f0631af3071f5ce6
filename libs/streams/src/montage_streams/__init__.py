"""Montage's stream runtime: reliable consumer groups over Redis Streams.

The public surface is this module; everything under ``_*`` is private. See
:mod:`montage_streams._consumer` for the guarantees (atomic hand-off, claim renewal, reclaim of
dead consumers' entries, durable retries, dead letters, recovery from a lost group, safe
trimming, graceful stop).
"""

from __future__ import annotations

from montage_streams._consumer import StreamConsumer, StreamProducer, default_consumer_name
from montage_streams._inspect import (
    ConsumerStats,
    DeadLetterEntry,
    consumer_stats,
    dead_letter,
    dead_letters,
    delayed_by_stream,
    delete_dead_letter,
    discard,
    in_flight,
    oldest_pending_age,
    requeue_dead_letter,
)
from montage_streams._metrics import LOST
from montage_streams._model import (
    REDIS_DOWN,
    DeadLetter,
    DeadLetterHook,
    Delivery,
    Emit,
    Entry,
    Handler,
    HandOffError,
    KeyLayout,
    id_key,
)
from montage_streams._reader import read_last, read_one, read_range
from montage_streams._retry import RetryPolicy
from montage_streams._stats import GroupStats, group_stats

__all__ = [
    "LOST",
    "REDIS_DOWN",
    "ConsumerStats",
    "DeadLetter",
    "DeadLetterEntry",
    "DeadLetterHook",
    "Delivery",
    "Emit",
    "Entry",
    "GroupStats",
    "HandOffError",
    "Handler",
    "KeyLayout",
    "RetryPolicy",
    "StreamConsumer",
    "StreamProducer",
    "consumer_stats",
    "dead_letter",
    "dead_letters",
    "default_consumer_name",
    "delayed_by_stream",
    "delete_dead_letter",
    "discard",
    "group_stats",
    "id_key",
    "in_flight",
    "oldest_pending_age",
    "read_last",
    "read_one",
    "read_range",
    "requeue_dead_letter",
]
