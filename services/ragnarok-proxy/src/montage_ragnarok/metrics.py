"""Prometheus metrics of the ragnarok-proxy."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RAGNAROK_CALLS = Counter(
    "montage_ragnarok_calls_total",
    "Calls to RAGNAROK by endpoint (submit, status) and outcome (HTTP status, unreachable, timeout)",
    ["endpoint", "status"],
)
RAGNAROK_CALL_SECONDS = Histogram(
    "montage_ragnarok_call_duration_seconds",
    "Duration of calls to RAGNAROK",
    ["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TRINITY_CALLS = Counter(
    "montage_trinity_calls_total", "Calls to Trinity by outcome (HTTP status, unreachable, timeout)", ["status"]
)
POLL_LAG = Histogram(
    "montage_ragnarok_poll_lag_seconds",
    "How late a job's poll started after it was due",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
POLL_LAG_LAST = Gauge("montage_ragnarok_poll_lag_last_seconds", "Largest poll lag in this replica's latest claim")
POLLS = Counter("montage_ragnarok_polls_total", "Workflow polls by outcome", ["outcome"])
JOBS = Gauge("montage_ragnarok_jobs", "Nexus jobs by status (whole table, refreshed periodically)", ["status"])
EVENTS = Counter("montage_ragnarok_events_total", "Final-status events pushed to the events stream", ["status"])
