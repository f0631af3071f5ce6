"""Prometheus metrics of the stages; the worker exposes them on ``/metrics``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from montage_contracts.errors import ErrorCode, MontageError
from prometheus_client import Counter, Gauge, Histogram

STAGE_DURATION = Histogram(
    "montage_stage_duration_seconds",
    "Time a stage's process() took",
    ["stage"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900),
)
STAGE_FAILURES = Counter("montage_stage_failures_total", "Stage runs that raised", ["stage", "code"])
CLIPS_RENDERED = Counter("montage_clips_rendered_total", "Clips rendered by video_generator", ["provider", "outcome"])
CLIP_ENTRIES = Counter(
    "montage_clip_entries_total",
    "Clip entries this process handled for any job's coordinator (ok, failed, cancelled, duplicate)",
    ["outcome"],
)


@asynccontextmanager
async def track_stage(stage: str) -> AsyncIterator[None]:
    """Observe the duration of a stage run and count its failure by error code."""
    start = time.perf_counter()
    try:
        yield
    except MontageError as exc:
        STAGE_FAILURES.labels(stage=stage, code=exc.code).inc()
        raise
    except Exception:
        STAGE_FAILURES.labels(stage=stage, code=ErrorCode.INTERNAL_ERROR).inc()
        raise
    finally:
        STAGE_DURATION.labels(stage=stage).observe(time.perf_counter() - start)


PROVIDER_IN_FLIGHT = Gauge(
    "montage_provider_in_flight",
    "Provider calls this process has in flight (each holds one of the provider's shared slots)",
    ["provider"],
)
PROVIDER_THROTTLED = Counter(
    "montage_provider_throttled_total",
    "429 answers from a provider (each sets the shared backoff every worker honours)",
    ["provider"],
)
