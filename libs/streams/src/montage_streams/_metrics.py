"""Prometheus metrics of the stream runtime, labelled by stream and consumer group."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROCESSED = Counter("montage_stream_processed_total", "Entries handled and acked", ["stream", "group"])
FAILED = Counter("montage_stream_failed_total", "Handler failures", ["stream", "group"])
RETRIED = Counter("montage_stream_retried_total", "Entries scheduled for retry", ["stream", "group"])
DEAD = Counter("montage_stream_dead_lettered_total", "Entries moved to the dead-letter stream", ["stream", "group"])
RECLAIMED = Counter("montage_stream_reclaimed_total", "Entries reclaimed from dead consumers", ["stream", "group"])
LOST = Counter("montage_stream_lost_claims_total", "Results discarded: claim lost", ["stream", "group"])
DURATION = Histogram(
    "montage_stream_handler_duration_seconds",
    "Handler duration",
    ["stream", "group"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900),
)
PENDING = Gauge("montage_stream_pending", "Entries delivered but not acked", ["stream", "group"])
LAG = Gauge("montage_stream_lag_seconds", "Age of the oldest entry the group has not read", ["stream", "group"])
