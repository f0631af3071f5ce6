"""Montage's stream runtime: reliable consumer groups over Redis Streams.

The public surface is this module; everything under ``_*`` is private. See
:mod:`montage_streams._consumer` for the guarantees (atomic hand-off, claim renewal, reclaim of
dead consumers' entries, durable retries, dead letters, recovery from a lost group, safe
trimming, graceful stop).
"""

from __future__ import annotations

from montage_streams._consumer import StreamConsumer, StreamProducer, default_consumer_name
from montage_streams._metrics import LOST
from montage_streams._model import (
    REDIS_DOWN,
    DeadLetter,
    DeadLetterHook,
    Delivery,
    Emit,
    Handler,
    HandOffError,
    KeyLayout,
)
from montage_streams._retry import RetryPolicy
from montage_streams._stats import GroupStats, group_stats

__all__ = [
    "LOST",
    "REDIS_DOWN",
    "DeadLetter",
    "DeadLetterHook",
    "Delivery",
    "Emit",
    "GroupStats",
    "HandOffError",
    "Handler",
    "KeyLayout",
    "RetryPolicy",
    "StreamConsumer",
    "StreamProducer",
    "default_consumer_name",
    "group_stats",
]
