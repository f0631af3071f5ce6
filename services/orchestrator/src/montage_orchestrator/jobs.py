"""Job bodies of the API: the cached snapshot of a job row and what the endpoints answer."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
from montage_common.pipeline import FINAL_STATUSES, remaining_after

from montage_orchestrator.store import iso


def estimated_remaining(status: str, current_stage: str | None, *, finished: bool = False) -> int:
    """Seconds left: the expected time of the stages not yet finished."""
    if status in FINAL_STATUSES:
        return 0
    return sum(s.expected_seconds for s in remaining_after(current_stage, finished=finished))


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
        "video_key": row["video_key"],
        "error_message": row["error_message"],
        "error_code": row["error_code"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "completed_at": iso(row["completed_at"]),
        "files_expire_at": iso(row["files_expire_at"]),
        "files_cleaned_at": iso(row["files_cleaned_at"]),
    }


def status_body(snap: dict[str, Any], video_url: str | None) -> dict[str, Any]:
    """``GET /api/v1/jobs/{job_id}``."""
    return {
        "job_id": snap["job_id"],
        "status": snap["status"],
        "current_stage": snap["current_stage"],
        "progress": snap["progress"],
        "estimated_remaining": estimated_remaining(snap["status"], snap["current_stage"]),
        "total_cost": _num(snap["total_cost"]),
        "video_url": video_url,
        "error_message": snap["error_message"],
        "created_at": snap["created_at"],
        "updated_at": snap["updated_at"],
    }


def list_item(row: asyncpg.Record) -> dict[str, Any]:
    """One entry of ``GET /api/v1/jobs``."""
    return {
        "job_id": str(row["job_id"]),
        "status": row["status"],
        "current_stage": row["current_stage"],
        "progress": row["progress"],
        "total_cost": row["total_cost"],
        "created_at": iso(row["created_at"]),
        "completed_at": iso(row["completed_at"]),
    }


def _num(value: Any) -> Any:
    return value if isinstance(value, Decimal | int | float) else Decimal(str(value))
