"""Fair turns, the start forecast and admission at the door.

**Turns.** A user's jobs beyond ``USER_MAX_ACTIVE_JOBS`` wait in Postgres, and start in turn.

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

**Forecast.** :func:`read_system` reads every unfinished job (its stage and how long it has been
there, or its place among the waiting) and the live workers of each stage (their heartbeats x
``WORKER_CONCURRENCY``); :func:`turns.forecast` simulates the stages' queues with each stage's
measured duration (``jobs.RATES`` x the song's length). A stage with no live worker counts as one
(KEDA starts one for work waiting); as workers are added the predicted waits fall.

**The door.** :func:`door` wraps the upload handler: before the body is read it predicts when a new
job of this user would start; past ``ADMISSION_MAX_WAIT_SECONDS`` it answers 503 (``ServiceBusy``)
with ``Retry-After`` (nothing read, nothing stored; the gateway gives the rate-limit slot back on
any answer but 201). The door reads the system at most once a second per process (:func:`cached_system`; again as soon
as a job of this process becomes final); an admitted upload counts as a waiting job of its user in
this process's forecasts until a reading holds its row, so a burst of uploads is not all admitted
on one reading.
:func:`places` gives ``queue_position`` and ``estimated_start`` of waiting jobs to the status bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import structlog
from aiohttp import web
from montage_common.web import internal_user
from montage_contracts import api
from montage_contracts.api import timestamp
from montage_contracts.errors import ErrorCode, ServiceBusy
from montage_contracts.pipeline import PIPELINE, STAGES, TYPICAL_SONG_SECONDS, JobStatus

from montage_orchestrator import metrics, turns
from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.health import stage_workers
from montage_orchestrator.jobs import RATES
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

# statement_timestamp(), not now(): the transaction may have waited for the lock since before the
# job's row was written, and its deadline must count from the start itself.
_START_SQL = """
UPDATE jobs SET status = 'processing', current_stage = COALESCE(current_stage, $3),
       started_at = statement_timestamp(), updated_at = statement_timestamp(),
       deadline_at = statement_timestamp() + make_interval(secs => $2)
WHERE job_id = $1 AND status = 'queued' AND deadline_at IS NULL
RETURNING *
"""


Started = list[tuple[Effects, int]]  # each started job's effects and its outbox row


async def start_turns(deps: Deps) -> int:
    """Start every waiting job whose turn it is; returns how many started."""
    async with deps.pool.acquire() as conn, conn.transaction():
        started = await give_turns(conn, deps)
    await turns_given(deps, started)
    return len(started)


async def give_turns(conn: asyncpg.Connection, deps: Deps) -> Started:
    """:func:`start_turns` in the caller's transaction (an upload's, with the job it inserts);
    :func:`turns_given` once that has committed."""
    s = deps.settings
    started: Started = []
    await conn.execute("SELECT pg_advisory_xact_lock($1)", TURNS_LOCK_ID)
    rows = await conn.fetch(_CANDIDATES_SQL, s.user_max_active_jobs, BATCH)
    held: dict[str, int] = {r["user_id"]: r["held"] for r in rows}
    waiting = [turns.Waiting(str(r["job_id"]), r["user_id"], r["created_at"]) for r in rows]
    for w in turns.pick_turns(waiting, held, s.user_max_active_jobs):
        eff = await _start(conn, deps, uuid.UUID(w.job_id))
        if eff is not None:
            started.append((eff, await deps.outbox.add(conn, uuid.UUID(w.job_id), eff.emits)))
    return started


async def give_turns_quietly(conn: asyncpg.Connection, deps: Deps) -> Started:
    """:func:`give_turns` in a savepoint: a failure leaves the caller's transaction whole (the
    turns are given on the next pass)."""
    try:
        async with conn.transaction():
            return await give_turns(conn, deps)
    except (asyncpg.PostgresError, OSError) as exc:
        log.warning("turns_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        return []


async def turns_given(deps: Deps, started: Started) -> None:
    """After the commit: each started job's effects, and its first task sent from the outbox."""
    for eff, outbox_id in started:
        await after_commit(deps, eff)
        await deps.outbox.send_quietly(outbox_id)


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


# --- the forecast ---------------------------------------------------------------------------
SYSTEM_LIMIT = 5000  # unfinished jobs a forecast reads at most (beyond: the door is closed anyway)
WORKERS_CACHE_SECONDS = 2.0  # live workers per stage are read at most this often per process

_SYSTEM_SQL = """
SELECT now() AS now, j.job_id, j.user_id, j.created_at, j.audio_duration, j.deadline_at IS NULL AS waiting,
       COALESCE(s.stage_name, j.current_stage) AS stage,
       COALESCE(EXTRACT(EPOCH FROM now() - s.started_at)::float8, 0) AS elapsed
FROM jobs j
LEFT JOIN LATERAL (
    SELECT st.stage_name, st.started_at FROM job_stages st
    WHERE st.job_id = j.job_id AND st.status = 'running' ORDER BY st.started_at DESC LIMIT 1
) s ON j.deadline_at IS NOT NULL
WHERE j.status IN ('queued', 'processing')
ORDER BY j.created_at
LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class System:
    """Every unfinished job and the live slots per stage, as read at ``now`` (the database's clock)."""

    now: datetime
    running: list[turns.Running]
    waiting: list[turns.Waiting]
    slots: dict[str, int]
    typical: tuple[float, ...]  # what each stage takes for a song of the usual length here


def stage_seconds(audio_seconds: float) -> tuple[float, ...]:
    """What each stage is expected to take for a song of ``audio_seconds`` (measured rates)."""
    return tuple(RATES.rate(spec) * audio_seconds for spec in PIPELINE)


# Per process and Redis namespace (one deployment; tests run several in one process).
_workers: dict[str, tuple[float, dict[str, int]]] = {}


async def live_slots(deps: Deps) -> dict[str, int]:
    """Tasks each stage can run at once: its workers with a live heartbeat (at least one) x concurrency."""
    space = deps.settings.redis_namespace
    read_at, slots = _workers.get(space, (-math.inf, {}))
    if time.monotonic() - read_at >= WORKERS_CACHE_SECONDS:
        each = deps.settings.worker_concurrency
        slots = {stage: max(1, await stage_workers(deps, stage)) * each for stage in STAGES}
        _workers[space] = (time.monotonic(), slots)
    return slots


async def read_system(deps: Deps) -> System:
    with contextlib.suppress(asyncpg.PostgresError):
        await RATES.refresh(deps.pool)  # at most once a minute
    rows = await deps.pool.fetch(_SYSTEM_SQL, SYSTEM_LIMIT)
    now = rows[0]["now"] if rows else await deps.pool.fetchval("SELECT now()")
    running: list[turns.Running] = []
    waiting: list[turns.Waiting] = []
    for r in rows:
        seconds = stage_seconds(r["audio_duration"])
        if r["waiting"]:
            waiting.append(turns.Waiting(str(r["job_id"]), r["user_id"], r["created_at"], seconds))
        else:
            running.append(turns.Running(str(r["job_id"]), r["user_id"], r["stage"], r["elapsed"], seconds))
    durations = sorted(r["audio_duration"] for r in rows)
    usual = durations[len(durations) // 2] if durations else TYPICAL_SONG_SECONDS
    return System(now, running, waiting, await live_slots(deps), stage_seconds(usual))


# The door reads the system at most this often per process (and again as soon as a job of this
# process becomes final): under a burst of uploads one reading serves many of them.
FORECAST_CACHE_SECONDS = 1.0


Reading = tuple[System, float]  # a reading of the system and when it began (time.monotonic())


async def cached_system(deps: Deps) -> Reading:
    """:func:`read_system` and when it began (``time.monotonic()``), or this process's reading of
    less than ``FORECAST_CACHE_SECONDS`` ago (its running jobs' elapsed times a little behind: the
    waits it predicts err long). One value: the door forgets the admitted uploads a reading holds by
    the time that reading began.

    Readings taken at once may end in any order: the one begun last is kept, and returned to each of
    them (an older one may lack the rows of uploads that the newer one's caller has forgotten)."""
    f = deps.forecasts
    began = time.monotonic()
    if f.latest is None or f.latest[1] < f.dropped_at or began - f.latest[1] >= FORECAST_CACHE_SECONDS:
        system = await read_system(deps)
        if f.latest is None or f.latest[1] <= began:
            f.latest = (system, began)
    latest: Reading = f.latest
    return latest


# --- the door -------------------------------------------------------------------------------
# The handler of an admitted upload puts its song's length here (``request[AUDIO_SECONDS]``), so
# that until a reading holds the job's row the door prices it by its song, not the usual one.
AUDIO_SECONDS: web.RequestKey[float] = web.RequestKey("audio_seconds", float)


@dataclass(slots=True)
class _Admitted:
    user: str
    done_at: float | None = None  # time.monotonic() when its job row was committed
    seconds: float | None = None  # its song's length, once the handler has read it


# Uploads admitted by this process whose job a reading of the system may not hold: those still in
# their handler, and those whose row was committed after the reading began.
_admitted: dict[str, dict[int, _Admitted]] = defaultdict(dict)
_tickets = itertools.count()


def _pending(admitted: dict[int, _Admitted], read_at: float) -> list[tuple[str, float | None]]:
    """The admitted uploads a reading begun at ``read_at`` may not hold, as (user, song seconds if
    known); the rest are forgotten: every later reading holds their rows."""
    for ticket in [t for t, a in admitted.items() if a.done_at is not None and a.done_at < read_at]:
        del admitted[ticket]
    return [(a.user, a.seconds) for a in admitted.values()]


def predicted_wait(system: System, user: str, admitted: Iterable[tuple[str, float | None]], per_user: int) -> float:
    """Seconds until a job of ``user`` uploaded now would start, behind ``admitted`` uploads too
    (each priced by its song when known, else as the usual song here)."""
    admitted = list(admitted)
    known = sorted(sec for _, sec in admitted if sec is not None)
    usual = system.typical  # the median song of the reading; with none in it, of the uploads since
    if known and not system.running and not system.waiting:
        usual = stage_seconds(known[len(known) // 2])
    pending = [
        turns.Waiting(f"admitted-{k}", u, system.now, usual if sec is None else stage_seconds(sec))
        for k, (u, sec) in enumerate(admitted)
    ]
    f = turns.forecast(system.running, [*system.waiting, *pending], system.slots, per_user, new_user=user)
    return f.starts.get(turns.NEW_JOB, math.inf)


async def new_job_wait(deps: Deps, user: str) -> float:
    """What the door predicts for a job of ``user`` uploaded now: the shared reading, and the uploads
    admitted here that it may not hold."""
    system, read_at = await cached_system(deps)
    admitted = _pending(_admitted[deps.settings.redis_namespace], read_at)
    return predicted_wait(system, user, admitted, deps.settings.user_max_active_jobs)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def door(handler: Handler) -> Handler:
    """Admission at the door for the upload handler (see the module docstring)."""

    async def at_the_door(request: web.Request) -> web.StreamResponse:
        deps = request.app[DEPS]
        s = deps.settings
        user = internal_user(request, s.internal_secret)
        if s.admission_max_wait_seconds <= 0:
            return await handler(request)
        admitted = _admitted[s.redis_namespace]
        wait = await new_job_wait(deps, user)
        metrics.ADMISSION_PREDICTED_WAIT.set(wait if math.isfinite(wait) else -1)
        if wait > s.admission_max_wait_seconds:
            metrics.ADMISSION_REFUSED.inc()
            metrics.UPLOAD_REJECTED.labels(ErrorCode.SERVICE_UNAVAILABLE).inc()
            after = turns.retry_after(wait, s.admission_max_wait_seconds) if math.isfinite(wait) else 60
            shown = int(wait) if math.isfinite(wait) else 0
            log.info("upload_refused_busy", user_id=user, predicted_wait=round(wait, 1), retry_after=after)
            raise ServiceBusy(
                f"Montage is busy: a new job would wait about {shown} s to start"
                f" (the limit is {s.admission_max_wait_seconds:.0f} s); retry in {after} s",
                retry_after=after,
                estimated_wait=shown,
            )
        ticket = next(_tickets)
        admitted[ticket] = entry = _Admitted(user)
        try:
            resp = await handler(request)
        except BaseException:
            admitted.pop(ticket, None)
            raise
        if resp.status == 201:
            entry.done_at = time.monotonic()  # counted until a reading holds its row
            entry.seconds = request.get(AUDIO_SECONDS)
        else:
            admitted.pop(ticket, None)
        return resp

    return at_the_door


# --- places in line -------------------------------------------------------------------------
async def places(deps: Deps, bodies: Sequence[api.Job | api.JobListItem]) -> None:
    """Set ``queue_position`` and ``estimated_start`` on each queued job's body (the others keep null)."""
    if not any(b.status == JobStatus.QUEUED for b in bodies):
        return
    system, _ = await cached_system(deps)
    f = turns.forecast(system.running, system.waiting, system.slots, deps.settings.user_max_active_jobs)
    if any(b.status == JobStatus.QUEUED and b.job_id not in f.positions for b in bodies):
        # a job newer than the shared reading: read again (the reading is shared from then on)
        deps.forecasts.drop()
        system, _ = await cached_system(deps)
        f = turns.forecast(system.running, system.waiting, system.slots, deps.settings.user_max_active_jobs)
    for body in bodies:
        if body.status == JobStatus.QUEUED and body.job_id in f.positions:
            body.queue_position = f.positions[body.job_id]
            start = f.starts.get(body.job_id)
            if start is not None:
                body.estimated_start = timestamp(system.now + timedelta(seconds=start))
