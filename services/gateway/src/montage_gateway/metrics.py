"""Gateway metrics (request counts and latency by route come from ``montage_common.web``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AUTH_FAILURES = Counter("montage_gateway_auth_failures_total", "Refused credentials", ["reason"])
RATE_LIMITED = Counter(
    "montage_gateway_rate_limited_total", "Requests refused by a rate limit", ["limit"]
)  # limit: jobs | user | ip
SSE_OPEN = Gauge("montage_gateway_sse_connections", "Open SSE connections in this process")
SSE_SUBSCRIPTIONS = Gauge("montage_gateway_sse_subscribed_jobs", "Job channels this process subscribes to")
SSE_DELIVERED = Counter("montage_gateway_sse_events_delivered_total", "SSE events written to clients", ["kind"])
SSE_DROPPED = Counter("montage_gateway_sse_dropped_total", "SSE connections dropped by the gateway", ["reason"])
SSE_REFUSED = Counter("montage_gateway_sse_refused_total", "SSE connections refused at a cap", ["cap"])
UPSTREAM_LATENCY = Histogram(
    "montage_gateway_upstream_duration_seconds",
    "Time to the upstream's response headers",
    ["upstream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_ERRORS = Counter("montage_gateway_upstream_errors_total", "Failed upstream calls", ["upstream", "kind"])
IDEMPOTENCY = Counter(
    "montage_gateway_idempotency_total", "Uploads sent with an Idempotency-Key, by what came of the key", ["outcome"]
)  # outcome: first | replayed | reused | in_use
