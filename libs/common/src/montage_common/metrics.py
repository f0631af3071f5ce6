"""Metrics every service exposes: HTTP requests and latency, connections closed by a limit."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "montage_http_requests_total", "HTTP requests handled", ["service", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "montage_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "montage_http_connections_closed_total",
    "Connections closed by a front-door limit (reason: header_timeout, per_client_cap)",
    ["service", "reason"],
)
