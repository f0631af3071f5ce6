"""Per-job metrics the spec names: success ratio, duration by outcome, cost per job.

Observed once per job, after the commit that made it final (the ``committed`` notes of
``transitions.Effects``), from the job row as written: its ``created_at`` and ``total_cost``.
The success ratio is ``montage_job_duration_seconds_count{outcome="completed"}`` over all
outcomes except ``cancelled`` (a user's cancel is neither a success nor a failure of the service);
the rules in ``tools/monitoring.py`` compute it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from montage_contracts.errors import ErrorCode

from montage_orchestrator import metrics

Outcome = Literal["completed", "failed", "cancelled"]


def failure_outcome(code: str) -> Outcome:
    """A failed job's outcome label: a cancel (user or operator) is not a failure of the service."""
    return "cancelled" if code == ErrorCode.CANCELLED else "failed"


def finished(row: Any, outcome: Outcome, now: datetime | None = None) -> None:
    """Observe one finished job (``row``: the job row as written; None when not at hand: skipped)."""
    if row is None:
        return
    now = now or datetime.now(UTC)
    metrics.JOB_DURATION.labels(outcome).observe(max(0.0, (now - row["created_at"]).total_seconds()))
    metrics.JOB_COST.labels(outcome).observe(float(row["total_cost"] or 0))
