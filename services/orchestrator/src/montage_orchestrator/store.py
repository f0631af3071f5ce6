"""SQL of the orchestrator: jobs, stages, costs, the outbox and handled results.

Every function takes a connection, so callers compose them into one transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from montage_common import tracing
from montage_contracts.api import timestamp
from montage_contracts.errors import ErrorCode
from montage_contracts.models import CostItem
from montage_contracts.pipeline import JobStatus, StageStatus

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
def traced(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` with the current span's ``traceparent`` (its column, migration 0900) when tracing
    is on: later dispatches continue the job's trace (``pipeline.dispatch_stage``)."""
    parent = tracing.traceparent()
    if isinstance(parent, str):
        job["traceparent"] = parent
    return job


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


async def stage_outputs(conn: asyncpg.Connection, job_id: uuid.UUID, names: Sequence[str]) -> dict[str, str | None]:
    """The stored outputs (JSON text) of the job's stages ``names`` that have a row."""
    rows = await conn.fetch(
        "SELECT stage_name, output::text AS output FROM job_stages WHERE job_id = $1 AND stage_name = ANY($2::text[])",
        job_id,
        list(names),
    )
    return {r["stage_name"]: r["output"] for r in rows}


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


# --- results: a read without locks, then every write in one call ---------------------------
# Both take a batch (results of different jobs handled at once; see ``batching``): one statement.
_READ_STATES = """
SELECT q.i, (SELECT h.emits FROM orchestrator_handled h WHERE h.entry_id = q.entry) AS handled,
       j.status, j.total_cost, j.cost_limit, j.estimated_cost, j.user_id, j.audio_key, j.user_prompt,
       j.audio_duration, s.names, s.statuses, s.dispatches, s.elapsed, s.outputs,
       (SELECT array_agg(c.call_id) FROM job_costs c
        WHERE c.job_id = q.job AND c.call_id IN (SELECT jsonb_array_elements_text(q.calls::jsonb))) AS recorded_calls
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[]) WITH ORDINALITY AS q (entry, job, outs, calls, i)
LEFT JOIN jobs j ON j.job_id = q.job
LEFT JOIN LATERAL (
    SELECT array_agg(st.stage_name) AS names, array_agg(st.status) AS statuses, array_agg(st.dispatch) AS dispatches,
           array_agg(EXTRACT(EPOCH FROM now() - st.started_at)::float8) AS elapsed,
           array_agg(CASE WHEN st.stage_name = ANY (string_to_array(q.outs, ',')) THEN st.output::text END) AS outputs
    FROM job_stages st WHERE st.job_id = q.job
) s ON true
ORDER BY q.i
"""


@dataclass(frozen=True, slots=True)
class StageState:
    status: StageStatus
    dispatch: int
    elapsed: float  # seconds since it was (last) dispatched, on the database's clock


@dataclass(slots=True)
class JobState:
    """What one result needs to know of its job, read without a lock."""

    handled: bytes | None  # the recorded emits when this entry was handled already
    found: bool
    status: JobStatus | None = None  # None: no such job
    total_cost: Decimal = Decimal(0)
    cost_limit: Decimal = Decimal(0)
    estimated_cost: Decimal = Decimal(0)
    user_id: str = ""
    audio_key: str = ""
    user_prompt: str = ""
    audio_duration: float = 0.0
    stages: dict[str, StageState] = field(default_factory=dict)
    outputs: dict[str, str | None] = field(default_factory=dict)  # only the stages asked for
    recorded_calls: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Read:
    """What to read for one result: is ``entry_key`` handled, the job, its stages, the outputs of
    ``outputs_of``, and which of ``call_ids`` are recorded."""

    entry_key: str
    job_id: uuid.UUID
    outputs_of: tuple[str, ...]
    call_ids: tuple[str, ...]


async def read_states(conn: asyncpg.Connection | asyncpg.Pool, reads: Sequence[Read]) -> list[JobState]:
    """One :class:`JobState` per :class:`Read`, in order: one statement."""
    rows = await conn.fetch(
        _READ_STATES,
        [r.entry_key for r in reads],
        [r.job_id for r in reads],
        [",".join(r.outputs_of) for r in reads],
        [json.dumps(r.call_ids) for r in reads],
    )
    return [_state(read, row) for read, row in zip(reads, rows, strict=True)]


def _state(read: Read, r: asyncpg.Record) -> JobState:
    state = JobState(handled=r["handled"], found=r["status"] is not None)
    if not state.found:
        return state
    state.status = JobStatus(r["status"])
    state.total_cost = r["total_cost"]
    state.cost_limit = r["cost_limit"]
    state.estimated_cost = r["estimated_cost"]
    state.user_id = r["user_id"]
    state.audio_key = r["audio_key"]
    state.user_prompt = r["user_prompt"]
    state.audio_duration = r["audio_duration"]
    if r["names"] is not None:
        for name, status, dispatch, elapsed, output in zip(
            r["names"], r["statuses"], r["dispatches"], r["elapsed"], r["outputs"], strict=True
        ):
            state.stages[name] = StageState(StageStatus(status), dispatch, elapsed or 0.0)
            if name in read.outputs_of:
                state.outputs[name] = output
    state.recorded_calls = frozenset(r["recorded_calls"] or ())
    return state


@dataclass(slots=True)
class Change:
    """Every write of one result, applied by ``orchestrator_apply`` (migration 0400) under the job's lock
    if the job, the stage and its costs are still as read (``expect_*``)."""

    entry_key: str
    job_id: uuid.UUID
    stage: str
    dispatch: int
    expect_status: JobStatus
    expect_total: Decimal
    record: bool = True  # keep the handled entry with its emits (not for progress messages)
    emits: bytes = b"[]"  # what goes out with the ack (``outbox.pack``), kept with the handled entry
    costs: list[CostItem] = field(default_factory=list)  # new provider calls of ``stage``
    stage_meta: dict[str, Any] | None = None  # merged into the stage's metadata
    finish: StageStatus | None = None  # close the stage with this status
    attempts: int = 0
    output: str | None = None  # JSON
    stage_error: str | None = None
    duration: float = 0.0
    fail_running: str | None = None  # fail every running stage of the job with this error
    next_stage: str | None = None  # start it under ``next_dispatch``
    next_dispatch: int = 0
    # the job row (None: unchanged)
    status: JobStatus | None = None
    progress: int | None = None
    current_stage: str | None = None
    total: Decimal | None = None
    video_key: str | None = None
    error_message: str | None = None
    error_code: ErrorCode | None = None
    started: bool = False  # started_at = now()
    completed: bool = False  # completed_at = now()
    expire_after: timedelta | None = None  # files_expire_at = now() + this


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: str  # ok | handled | stale | conflict
    emits: bytes | None  # handled: the recorded emits
    job: asyncpg.Record | None  # ok: the job row as written


# ``orchestrator_apply``'s arguments in its order: (name, SQL type, the value from a Change).
_APPLY_ARGS: tuple[tuple[str, str, Callable[[Change], Any]], ...] = (
    ("entry", "text", lambda c: c.entry_key),
    ("job", "uuid", lambda c: c.job_id),
    ("stage", "text", lambda c: c.stage),
    ("dispatch", "integer", lambda c: c.dispatch),
    ("expect_status", "text", lambda c: c.expect_status),
    ("expect_total", "numeric", lambda c: c.expect_total),
    ("costs", "jsonb", lambda c: _costs_json(c.costs)),
    ("stage_meta", "jsonb", lambda c: None if c.stage_meta is None else json.dumps(c.stage_meta)),
    ("finish", "text", lambda c: c.finish),
    ("attempts", "integer", lambda c: c.attempts),
    ("output", "jsonb", lambda c: c.output),
    ("stage_error", "text", lambda c: c.stage_error),
    ("duration", "float8", lambda c: c.duration),
    ("fail_running", "text", lambda c: c.fail_running),
    ("next", "text", lambda c: c.next_stage),
    ("next_dispatch", "integer", lambda c: c.next_dispatch),
    ("status", "text", lambda c: c.status),
    ("progress", "integer", lambda c: c.progress),
    ("current_stage", "text", lambda c: c.current_stage),
    ("total", "numeric", lambda c: c.total),
    ("video_key", "text", lambda c: c.video_key),
    ("error_message", "text", lambda c: c.error_message),
    ("error_code", "text", lambda c: c.error_code),
    ("started", "boolean", lambda c: c.started),
    ("completed", "boolean", lambda c: c.completed),
    ("expire", "interval", lambda c: c.expire_after),
    ("record", "boolean", lambda c: c.record),
    ("emits", "bytea", lambda c: c.emits),
)
# The calls in the arrays' order (a nested loop over the unnest), each its own row and ordinal.
_APPLY = (
    "SELECT q.i, a.o_outcome, a.o_emits, a.o_job FROM unnest("
    + ", ".join(f"${n}::{t}[]" for n, (_, t, _) in enumerate(_APPLY_ARGS, start=1))
    + ") WITH ORDINALITY AS q ("
    + ", ".join(f'"{name}"' for name, _, _ in _APPLY_ARGS)
    + ", i) CROSS JOIN LATERAL orchestrator_apply("
    + ", ".join(f'q."{name}"' for name, _, _ in _APPLY_ARGS)
    + ") AS a ORDER BY q.i"
)


def _costs_json(items: list[CostItem]) -> str:
    return json.dumps([{"api": i.api_name, "call": i.call_id, "amount": str(i.amount)} for i in items])


def _apply_args(c: Change) -> tuple[Any, ...]:
    return tuple(value(c) for _, _, value in _APPLY_ARGS)


async def apply(conn: asyncpg.Connection | asyncpg.Pool, changes: Sequence[Change]) -> list[Applied]:
    """Apply ``changes`` (of different jobs) in one statement, one transaction; one :class:`Applied`
    each, in order. The calls run sorted by job id, so concurrent batches lock jobs in one order."""
    order = sorted(range(len(changes)), key=lambda k: changes[k].job_id)
    columns = list(zip(*(_apply_args(changes[k]) for k in order), strict=True))
    rows = await conn.fetch(_APPLY, *(list(col) for col in columns))
    out: list[Applied | None] = [None] * len(changes)
    for k, r in zip(order, rows, strict=True):
        out[k] = Applied(r["o_outcome"], r["o_emits"], r["o_job"])
    assert all(a is not None for a in out)
    return [a for a in out if a is not None]
