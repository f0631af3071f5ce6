"""SQL of the orchestrator: jobs, stages, costs, the outbox and handled results.

Every function takes a connection, so callers compose them into one transaction.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from montage_common.api import timestamp
from montage_common.models import CostItem

_JOB_COLUMNS = frozenset(
    {
        "status",
        "current_stage",
        "progress",
        "total_cost",
        "video_key",
        "error_message",
        "error_code",
        "started_at",
        "completed_at",
        "files_expire_at",
        "files_cleaned_at",
    }
)


def as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


# --- jobs -------------------------------------------------------------------------------
async def insert_job(conn: asyncpg.Connection, job: dict[str, Any]) -> asyncpg.Record:
    cols = list(job)
    placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    sql = f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({placeholders}) RETURNING *"
    row: asyncpg.Record = await conn.fetchrow(sql, *job.values())
    return row


async def get_job(conn: asyncpg.Connection | asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    return row


async def lock_job(conn: asyncpg.Connection, job_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1 FOR UPDATE", job_id)
    return row


async def update_job(conn: asyncpg.Connection, job_id: uuid.UUID, **values: Any) -> asyncpg.Record:
    unknown = set(values) - _JOB_COLUMNS
    if unknown:
        raise ValueError(f"not job columns: {sorted(unknown)}")
    sets = [f"{name} = ${i}" for i, name in enumerate(values, start=2)]
    sets.append("updated_at = now()")
    sql = f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = $1 RETURNING *"
    row: asyncpg.Record = await conn.fetchrow(sql, job_id, *values.values())
    return row


async def list_jobs(
    conn: asyncpg.Pool, user_id: str, status: str | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    where = "user_id = $1" + (" AND status = $2" if status else "")
    args: list[Any] = [user_id, *([status] if status else [])]
    total: int = await conn.fetchval(f"SELECT count(*) FROM jobs WHERE {where}", *args)
    n = len(args)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT * FROM jobs WHERE {where} ORDER BY created_at DESC, job_id LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        limit,
        offset,
    )
    return rows, total


async def count_active(conn: asyncpg.Pool) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')")
    return n


async def overdue_jobs(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM jobs WHERE status IN ('queued', 'processing') AND deadline_at < now()"
        " ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return rows


# --- stages -----------------------------------------------------------------------------
async def start_stage(conn: asyncpg.Connection, job_id: uuid.UUID, stage: str) -> int:
    """Mark ``stage`` running under a new dispatch number; returns that number."""
    dispatch: int = await conn.fetchval(
        "INSERT INTO job_stages (job_id, stage_name, status, dispatch, started_at)"
        " VALUES ($1, $2, 'running', 1, now())"
        " ON CONFLICT (job_id, stage_name) DO UPDATE SET status = 'running',"
        " dispatch = job_stages.dispatch + 1, started_at = now(), completed_at = NULL, error = NULL"
        " RETURNING dispatch",
        job_id,
        stage,
    )
    return dispatch


async def get_stage(conn: asyncpg.Connection, job_id: uuid.UUID, stage: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM job_stages WHERE job_id = $1 AND stage_name = $2", job_id, stage
    )
    return row


async def stage_outputs(conn: asyncpg.Connection, job_id: uuid.UUID) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch("SELECT * FROM job_stages WHERE job_id = $1", job_id)
    return {r["stage_name"]: r for r in rows}


async def finish_stage(
    conn: asyncpg.Connection,
    job_id: uuid.UUID,
    stage: str,
    *,
    status: str,
    attempts: int = 0,
    output: str | None = None,
    metadata: dict[str, Any] | None = None,
    error: str | None = None,
) -> float:
    """Close ``stage``; returns its duration in seconds (from dispatch to now)."""
    duration: float = await conn.fetchval(
        "UPDATE job_stages SET status = $3, attempts = GREATEST(attempts, $4), completed_at = now(),"
        " duration_seconds = EXTRACT(EPOCH FROM now() - started_at), output = COALESCE($5::jsonb, output),"
        " metadata = metadata || $6::jsonb, error = $7"
        " WHERE job_id = $1 AND stage_name = $2 RETURNING duration_seconds",
        job_id,
        stage,
        status,
        attempts,
        output,
        json.dumps(metadata or {}),
        error,
    )
    return float(duration or 0.0)


async def fail_running_stages(conn: asyncpg.Connection, job_id: uuid.UUID, error: str) -> None:
    await conn.execute(
        "UPDATE job_stages SET status = 'failed', completed_at = now(), error = $2,"
        " duration_seconds = EXTRACT(EPOCH FROM now() - started_at)"
        " WHERE job_id = $1 AND status = 'running'",
        job_id,
        error,
    )


async def patch_stage_metadata(conn: asyncpg.Connection, job_id: uuid.UUID, stage: str, patch: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE job_stages SET metadata = metadata || $3::jsonb WHERE job_id = $1 AND stage_name = $2",
        job_id,
        stage,
        json.dumps(patch),
    )


# --- costs ------------------------------------------------------------------------------
async def insert_cost(conn: asyncpg.Connection, job_id: uuid.UUID, stage: str, item: CostItem) -> bool:
    """Record one provider call; False when ``call_id`` was already recorded (redelivery)."""
    row = await conn.fetchrow(
        "INSERT INTO job_costs (job_id, stage_name, api_name, call_id, cost) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (job_id, call_id) DO NOTHING RETURNING id",
        job_id,
        stage,
        item.api_name,
        item.call_id,
        item.amount,
    )
    return row is not None


async def cost_recorded(conn: asyncpg.Connection, job_id: uuid.UUID, call_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM job_costs WHERE job_id = $1 AND call_id = $2", job_id, call_id))


# --- handled results and the outbox -----------------------------------------------------
async def handled_emits(conn: asyncpg.Connection, entry_key: str) -> bytes | None:
    data: bytes | None = await conn.fetchval("SELECT emits FROM orchestrator_handled WHERE entry_id = $1", entry_key)
    return data


async def record_handled(conn: asyncpg.Connection, entry_key: str, job_id: uuid.UUID, emits: bytes) -> None:
    await conn.execute(
        "INSERT INTO orchestrator_handled (entry_id, job_id, emits) VALUES ($1, $2, $3)"
        " ON CONFLICT (entry_id) DO NOTHING",
        entry_key,
        job_id,
        emits,
    )


async def add_outbox(conn: asyncpg.Connection, job_id: uuid.UUID | None, emits: bytes) -> int:
    oid: int = await conn.fetchval(
        "INSERT INTO orchestrator_outbox (job_id, emits) VALUES ($1, $2) RETURNING id", job_id, emits
    )
    return oid


async def claim_outbox(conn: asyncpg.Connection, outbox_id: int) -> bytes | None:
    """Delete one outbox entry (row-locked until the transaction ends); None if gone or taken."""
    data: bytes | None = await conn.fetchval(
        "DELETE FROM orchestrator_outbox WHERE id = (SELECT id FROM orchestrator_outbox WHERE id = $1"
        " FOR UPDATE SKIP LOCKED) RETURNING emits",
        outbox_id,
    )
    return data


async def stale_outbox_ids(conn: asyncpg.Pool, older_than_seconds: float, limit: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT id FROM orchestrator_outbox WHERE created_at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [r["id"] for r in rows]


async def prune_handled(conn: asyncpg.Pool, older_than_seconds: float) -> int:
    res: str = await conn.execute(
        "DELETE FROM orchestrator_handled WHERE created_at < now() - make_interval(secs => $1)",
        older_than_seconds,
    )
    return int(res.rsplit(maxsplit=1)[-1])


def iso(ts: datetime | None) -> str | None:
    return None if ts is None else timestamp(ts)
