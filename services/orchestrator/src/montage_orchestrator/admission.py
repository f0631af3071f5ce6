"""Fair turns: a user's jobs beyond ``USER_MAX_ACTIVE_JOBS`` wait in Postgres, and start in turn.

A job is *waiting* while ``status = 'queued' AND deadline_at IS NULL``: its row exists, its song is
stored, and no task of it is in any stream. It *holds a slot* from the moment its first stage is
dispatched until it is final: that moment sets ``status = 'processing'``, ``started_at`` and
``deadline_at = now() + JOB_TIMEOUT_SECONDS`` (so the timeout measures work, never waiting).

:func:`start_turns` gives turns: under one transaction-level advisory lock (every replica runs it;
they take turns, so two never count the same free slot), it reads the waiting jobs and each user's
held slots, asks :func:`turns.pick_turns` which start, and starts each with its first task in the
outbox (sent after the commit, re-sent by the sweeper after a crash). It runs after every upload,
promptly after any job becomes final (:func:`~montage_orchestrator.transitions.after_commit` sets
``Deps.turns_due``; :func:`run` wakes), and on every sweep interval as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import structlog
from montage_contracts.pipeline import STAGES

from montage_orchestrator import turns
from montage_orchestrator.deps import Deps
from montage_orchestrator.pipeline import dispatch_stage
from montage_orchestrator.transitions import Effects, after_commit, begin

log = structlog.get_logger()

# pg_advisory_xact_lock key of the turn-giver ("turns" in ASCII; the migrations' lock is another).
TURNS_LOCK_ID = 0x7475726E73
BATCH = 200  # jobs started per pass at most (the next pass starts the rest)

# The waiting jobs that could start (each user's first USER_MAX_ACTIVE_JOBS, oldest first) and the
# slots their users hold.
_CANDIDATES_SQL = """
WITH w AS (
    SELECT job_id, user_id, created_at,
           row_number() OVER (PARTITION BY user_id ORDER BY created_at, job_id) AS k
    FROM jobs WHERE status = 'queued' AND deadline_at IS NULL
)
SELECT w.job_id, w.user_id, w.created_at,
       (SELECT count(*) FROM jobs a WHERE a.user_id = w.user_id
          AND a.status IN ('queued', 'processing') AND a.deadline_at IS NOT NULL) AS held
FROM w WHERE w.k <= $1
ORDER BY w.created_at, w.job_id
LIMIT $2
"""

_START_SQL = """
UPDATE jobs SET status = 'processing', current_stage = COALESCE(current_stage, $3), started_at = now(),
       updated_at = now(), deadline_at = now() + make_interval(secs => $2)
WHERE job_id = $1 AND status = 'queued' AND deadline_at IS NULL
RETURNING *
"""


async def start_turns(deps: Deps) -> int:
    """Start every waiting job whose turn it is; returns how many started."""
    s = deps.settings
    started: list[tuple[Effects, int]] = []
    async with deps.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", TURNS_LOCK_ID)
        rows = await conn.fetch(_CANDIDATES_SQL, s.user_max_active_jobs, BATCH)
        held: dict[str, int] = {r["user_id"]: r["held"] for r in rows}
        waiting = [turns.Waiting(str(r["job_id"]), r["user_id"], r["created_at"]) for r in rows]
        for w in turns.pick_turns(waiting, held, s.user_max_active_jobs):
            eff = await _start(conn, deps, uuid.UUID(w.job_id))
            if eff is not None:
                started.append((eff, await deps.outbox.add(conn, uuid.UUID(w.job_id), eff.emits)))
    for eff, outbox_id in started:
        await after_commit(deps, eff)
        await deps.outbox.send_quietly(outbox_id)
    return len(started)


async def _start(conn: asyncpg.Connection, deps: Deps, job_id: uuid.UUID) -> Effects | None:
    """The job's first stage, dispatched in the caller's transaction; None if it stopped waiting
    meanwhile (cancelled: the update waits for the cancel's row lock, then matches nothing)."""
    s = deps.settings
    row = await conn.fetchrow(_START_SQL, job_id, s.job_timeout_seconds, STAGES[0])
    if row is None:
        return None
    eff = Effects(job_id=str(job_id), total=row["total_cost"], row=row)
    await begin(deps, eff)
    # An upload starts at audio_parser; a retry at the first stage its original did not finish
    # (``retry``: the earlier ones are in job_stages already, and the input is built from them).
    await dispatch_stage(conn, deps, row, row["current_stage"], eff)
    waited = (row["started_at"] - row["created_at"]).total_seconds()
    eff.committed.append(lambda: log.info("job_started", job_id=str(job_id), waited=round(waited, 3)))
    return eff


async def start_turns_quietly(deps: Deps) -> None:
    """:func:`start_turns` where a failure must not fail the caller (the next pass retries)."""
    try:
        await start_turns(deps)
    except Exception as exc:
        log.warning("turns_failed", error=f"{type(exc).__name__}: {exc}"[:300])


async def run(deps: Deps, stop: asyncio.Event) -> None:
    """Give turns whenever a job may have freed a slot (``deps.turns_due``), else every sweep interval."""
    while not stop.is_set():
        deps.turns_due.clear()
        await start_turns_quietly(deps)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(deps.turns_due.wait())]
        try:
            await asyncio.wait(waits, timeout=deps.settings.sweep_interval_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w
