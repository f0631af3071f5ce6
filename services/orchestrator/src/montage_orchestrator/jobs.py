"""Job bodies of the API: the cached snapshot of a job row and what the endpoints answer."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

import asyncpg
from montage_contracts import api
from montage_contracts.api import timestamp
from montage_contracts.errors import job_retryable
from montage_contracts.pipeline import FINAL_STATUSES, PIPELINE, JobStatus, StageSpec, remaining_after

from montage_orchestrator.store import iso

_RATES_SQL = """
SELECT stage_name, percentile_cont(0.5) WITHIN GROUP (ORDER BY rate) AS rate, count(*) AS samples
FROM (
    SELECT s.stage_name, s.duration_seconds / j.audio_duration AS rate,
           row_number() OVER (PARTITION BY s.stage_name ORDER BY s.completed_at DESC) AS k
    FROM job_stages s JOIN jobs j ON j.job_id = s.job_id
    WHERE s.status = 'completed' AND s.duration_seconds IS NOT NULL AND j.audio_duration > 0
      AND s.completed_at > now() - interval '7 days'
) recent
WHERE k <= $1
GROUP BY stage_name
"""


class StageRates:
    """Seconds of work per second of song, per stage, measured on this deployment.

    The median over each stage's most recent completed runs (``window``, last 7 days; each run's
    ``job_stages.duration_seconds``, the worker's own time on it), read at
    most every ``refresh_seconds``; a stage with fewer than ``min_samples`` runs uses its spec's
    prior (:attr:`StageSpec.seconds_per_audio_second`). On a fresh deployment, while some stage
    has no measured rate yet, the table is read every ``cold_refresh_seconds`` for the process's
    first ``cold_window_seconds``: the priors (written for real providers) give way to what this
    deployment measures within seconds of its first jobs, not a minute later.
    """

    def __init__(
        self,
        *,
        refresh_seconds: float = 60.0,
        min_samples: int = 3,
        window: int = 50,
        cold_refresh_seconds: float = 5.0,
        cold_window_seconds: float = 600.0,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.min_samples = min_samples
        self.window = window
        self.cold_refresh_seconds = cold_refresh_seconds
        self.cold_until = time.monotonic() + cold_window_seconds
        self.measured: dict[str, float] = {}
        self._read_at = -math.inf

    def _interval(self) -> float:
        cold = len(self.measured) < len(PIPELINE) and time.monotonic() < self.cold_until
        return self.cold_refresh_seconds if cold else self.refresh_seconds

    async def refresh(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        if time.monotonic() - self._read_at < self._interval():
            return
        self._read_at = time.monotonic()
        rows = await db.fetch(_RATES_SQL, self.window)
        self.measured = {r["stage_name"]: float(r["rate"]) for r in rows if r["samples"] >= self.min_samples}

    def rate(self, stage: StageSpec) -> float:
        return self.measured.get(stage.name, stage.seconds_per_audio_second)


RATES = StageRates()  # one per process: every replica measures the same table


def estimated_remaining(
    status: str,
    current_stage: str | None,
    audio_seconds: float | None,
    *,
    finished: bool = False,
    rates: StageRates = RATES,
) -> int:
    """Seconds left: the song's duration times the measured rate of each stage not yet finished."""
    if status in FINAL_STATUSES:
        return 0
    seconds = audio_seconds if audio_seconds and audio_seconds > 0 else 0.0
    stages = remaining_after(current_stage, finished=finished)
    if not seconds:  # an old cached snapshot without the duration: the spec's typical song
        return sum(s.expected_seconds for s in stages)
    return math.ceil(sum(rates.rate(s) * seconds for s in stages))


def snapshot(row: asyncpg.Record) -> dict[str, Any]:
    """The cacheable view of a job row (JSON-safe; money stays exact as a JSON number)."""
    return {
        "job_id": str(row["job_id"]),
        "user_id": row["user_id"],
        "status": row["status"],
        "current_stage": row["current_stage"],
        "progress": row["progress"],
        "total_cost": row["total_cost"],
        "estimated_cost": row["estimated_cost"],
        "audio_duration": row["audio_duration"],
        "video_key": row["video_key"],
        "error_message": row["error_message"],
        "error_code": row["error_code"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "completed_at": iso(row["completed_at"]),
        "files_expire_at": iso(row["files_expire_at"]),
        "files_cleaned_at": iso(row["files_cleaned_at"]),
        **retry_links(row),
    }


def retry_links(row: Any) -> dict[str, str | None]:
    """How a job and its retry name each other (``retry_of``, ``retried_by``; see ``retry``)."""
    return {name: None if row.get(name) is None else str(row[name]) for name in ("retry_of", "retried_by")}


def status_body(snap: dict[str, Any], video_url: str | None) -> api.Job:
    """``GET /api/v1/jobs/{job_id}`` from a :func:`snapshot` (cached, or read now)."""
    status = JobStatus(snap["status"])
    code = snap.get("error_code") if status == JobStatus.FAILED else None
    return api.Job(
        job_id=snap["job_id"],
        status=status,
        current_stage=snap["current_stage"],
        progress=snap["progress"],
        estimated_remaining=estimated_remaining(status, snap["current_stage"], snap.get("audio_duration")),
        total_cost=money(snap["total_cost"]),
        video_url=video_url,
        error_message=snap["error_message"],
        error_code=code,
        retryable=job_retryable(code),
        created_at=snap["created_at"],
        updated_at=snap["updated_at"],
        queue_position=None,  # while it waits: ``admission.places``
        estimated_start=None,
        retry_of=snap.get("retry_of"),
        retried_by=snap.get("retried_by"),
    )


def list_item(row: asyncpg.Record) -> api.JobListItem:
    """One entry of ``GET /api/v1/jobs``."""
    return api.JobListItem(
        job_id=str(row["job_id"]),
        status=JobStatus(row["status"]),
        current_stage=row["current_stage"],
        progress=row["progress"],
        total_cost=money(row["total_cost"]),
        created_at=timestamp(row["created_at"]),
        completed_at=iso(row["completed_at"]),
        queue_position=None,  # while it waits: ``admission.places``
        estimated_start=None,
        **retry_links(row),
    )


def money(value: Decimal | float | str) -> float:
    """An amount as the API's ``Money`` (a JSON number): from Postgres (``Decimal``) or the cache."""
    return float(value)
