"""The operator console's API (``/api/v1/admin/*``), forwarded by the gateway to admins only.

Every route needs the gateway's internal credential, a user id, and ``X-Montage-Role: admin``
(the gateway sets it after checking the token's admin claim and drops any copy a client sends).

**Queues.** Per stage (and the results stream): length, waiting (the group's lag) and the age of
the oldest waiting task, in flight (pending) and the age of the oldest, delayed retries (members
of the delayed set bound for that stream), dead letters, the group's consumers with their idle
time joined with the workers' heartbeat keys. Throughput and p95 come from the results stream
itself: each ``StageResult`` entry is a finished attempt of one stage (the entry id is when it
finished, ``duration_seconds`` how long the worker's handler ran). :class:`ResultWindow` keeps a
small rolling record of them in this process, read incrementally (from the last entry it saw,
bounded per call), so a poll costs only the results added since the previous poll.

**Dead letters.** A stage task is dead-lettered after its last retry or on a permanent error,
and the worker's hook reports a failed ``StageResult``: by the time an operator sees the dead
letter, the job has usually failed (or, for ``scene_planner``/``reference_generator``, moved on
with a fallback). Putting the old task back on the stream would not help: its ``dispatch`` is
stale, so its result would be ignored. A *retry* therefore re-dispatches the stage through the
job's state machine, in one Postgres transaction with the job row locked:

- the job must exist, not be ``completed``, not have been cancelled by its user, still be at
  that stage (``current_stage``), and the stage's row must still carry the dead letter's
  ``dispatch`` (no newer attempt since); its files must not be cleaned yet;
- a failed job is re-opened (``processing``, error and completion cleared, a fresh deadline of
  ``JOB_TIMEOUT_SECONDS``, file expiry cleared), the job's cancel flag is removed, and after the
  commit its logged ``error`` event is withdrawn from the SSE log (one history, one end);
- the stage is dispatched anew from the stored outputs of the stages before it (a new dispatch
  number, the budget check of expensive stages, ``message`` and ``stage_update started``
  events), through the outbox; the action is logged in ``admin_actions`` in the same
  transaction; after the commit the dead letter is deleted and the outbox entry sent.

Anything else is 409 with the reason (the entry stays; delete it). A dead letter of the results
stream is the orchestrator's own input: it goes back onto the results stream as is (the
pipeline ignores stale or already-handled results). Deleting removes the entry only.
Every action (also on entries that no longer exist) is written to ``admin_actions`` with the
admin's user id.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import structlog
from aiohttp import web
from montage_common.events import withdraw_final_events
from montage_common.storage import layout
from montage_common.web import REQUEST_ID, Handler, internal_user, query_int, query_text
from montage_contracts.api import ENTRY_ID_PATTERN, MessageData, timestamp
from montage_contracts.errors import Conflict, ErrorCode, Forbidden, NotFound, ValidationError
from montage_contracts.events import decode_event
from montage_contracts.keys import ORCHESTRATOR_GROUP
from montage_contracts.messages import task_decoder
from montage_contracts.pipeline import FINAL_STATUSES, JOB_STATUSES, STAGES, JobStatus, StageStatus
from montage_streams import (
    DeadLetterEntry,
    consumer_stats,
    dead_letter,
    dead_letters,
    delayed_by_stream,
    delete_dead_letter,
    group_stats,
    oldest_pending_age,
    requeue_dead_letter,
)

from montage_orchestrator import store
from montage_orchestrator.deps import DEPS, Deps
from montage_orchestrator.jobs import snapshot
from montage_orchestrator.pipeline import dispatch_stage
from montage_orchestrator.transitions import Effects, after_commit, begin, fail_job

log = structlog.get_logger()
_json = msgspec.json.Encoder(decimal_format="number")

HEADER_ROLE = "X-Montage-Role"  # set by the gateway (montage_gateway.admin) for admins only
ADMIN_ROLE = "admin"
RESULTS = "results"  # the results stream's name in admin paths
OPERATOR_CANCEL_MESSAGE = "Job cancelled by an operator"
WINDOW_MAX_SECONDS = 3600
RETRY_ALL_MAX = 200


def respond(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def _admin(request: web.Request) -> tuple[Deps, str]:
    deps = request.app[DEPS]
    user = internal_user(request, deps.settings.internal_secret)
    if request.headers.get(HEADER_ROLE, "") != ADMIN_ROLE:
        raise Forbidden("Admins only")
    return deps, user


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENTRY_ID = re.compile(ENTRY_ID_PATTERN)


def _iso_ms(ms: int) -> str:
    """Milliseconds since the epoch (a stream entry id, a file's mtime) in the API's one time
    format; integer arithmetic, so the milliseconds are exact."""
    return timestamp(_EPOCH + timedelta(milliseconds=ms))


def _stream(deps: Deps, name: str) -> tuple[str, str]:
    """An admin stream name (a stage, or ``results``) → (stream key, group)."""
    if name in STAGES:
        return deps.keys.stage_stream(name), deps.keys.stage_group(name)
    if name == RESULTS:
        return deps.keys.results_stream(), ORCHESTRATOR_GROUP
    raise NotFound(f"No stream {name!r}; one of {', '.join((*STAGES, RESULTS))}")


def _entry_id(raw: str, name: str = "entry_id") -> str:
    """A dead letter's id as Redis accepts it (``<ms>-<seq>``, each part a 64-bit integer, the
    document's pattern); 400 otherwise, so an id Redis would refuse never reaches it."""
    if _ENTRY_ID.fullmatch(raw) is None:
        raise ValidationError(f"{name} must be a stream entry id (<ms>-<seq>, each at most 2^64-1)")
    return raw


def _stream_param(deps: Deps, name: str) -> tuple[str, str]:
    """:func:`_stream` for a query parameter: an unknown name is a bad request (400), not a
    missing resource."""
    try:
        return _stream(deps, name)
    except NotFound as err:
        raise ValidationError(err.message) from None


# --- the action log -----------------------------------------------------------------------
async def record_action(  # noqa: PLR0917
    conn: asyncpg.Connection | asyncpg.Pool,
    actor: str,
    action: str,
    target: str,
    job_id: uuid.UUID | None,
    outcome: str,
    detail: dict[str, Any],
    request_id: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO admin_actions (actor, action, target, job_id, outcome, detail, request_id)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
        actor,
        action,
        target,
        job_id,
        outcome,
        _json.encode(detail).decode(),
        request_id,
    )


def _action_row(r: asyncpg.Record) -> dict[str, Any]:
    detail = r["detail"]
    return {
        "id": r["id"],
        "actor": r["actor"],
        "action": r["action"],
        "target": r["target"],
        "job_id": str(r["job_id"]) if r["job_id"] else None,
        "outcome": r["outcome"],
        "detail": msgspec.json.decode(detail) if isinstance(detail, str | bytes) else (detail or {}),
        "request_id": r["request_id"],
        "created_at": store.iso(r["created_at"]),
    }


async def actions(request: web.Request) -> web.Response:
    deps, _ = _admin(request)
    limit = query_int(request, "limit", 50, 1, 500)
    job = request.query.get("job_id")
    if job is not None:
        job_id = store.as_uuid(job)
        if job_id is None:
            raise ValidationError("job_id must be a UUID")
        rows = await deps.pool.fetch(
            "SELECT * FROM admin_actions WHERE job_id = $1 ORDER BY id DESC LIMIT $2", job_id, limit
        )
    else:
        rows = await deps.pool.fetch("SELECT * FROM admin_actions ORDER BY id DESC LIMIT $1", limit)
    return respond({"actions": [_action_row(r) for r in rows]})


# --- throughput and p95 from the results stream --------------------------------------------
class _Peek(msgspec.Struct):
    """The fields of a results-stream payload the window needs (the rest is skipped)."""

    type: str = ""
    stage: str = ""
    ok: bool = False
    duration_seconds: float = 0.0


_peek = msgspec.json.Decoder(_Peek)


class ResultWindow:
    """A rolling record of finished stage attempts: (finished ms, stage, ok, seconds)."""

    BATCH = 1000
    MAX_BATCHES = 20  # per refresh; the rest is read by the next one

    def __init__(self, keep_seconds: int = WINDOW_MAX_SECONDS) -> None:
        self.keep_ms = keep_seconds * 1000
        self.items: deque[tuple[int, str, bool, float]] = deque()
        self.last_id = ""
        self._lock = asyncio.Lock()

    async def refresh(self, deps: Deps) -> None:
        async with self._lock:
            now = int(time.time() * 1000)
            floor = now - self.keep_ms
            start = f"({self.last_id}" if self.last_id and int(self.last_id.split("-")[0]) >= floor else str(floor)
            r: Any = deps.redis
            for _ in range(self.MAX_BATCHES):
                rows = await r.xrange(deps.keys.results_stream(), min=start, count=self.BATCH)
                for raw_id, fields in rows:
                    eid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                    self.last_id = eid
                    try:
                        peek = _peek.decode(fields.get(b"m", b""))
                    except msgspec.DecodeError:
                        continue
                    if peek.type == "result":
                        self.items.append((int(eid.split("-")[0]), peek.stage, peek.ok, peek.duration_seconds))
                if len(rows) < self.BATCH:
                    break
                start = f"({self.last_id}"
            while self.items and self.items[0][0] < floor:
                self.items.popleft()

    def summary(self, window_seconds: int) -> dict[str, dict[str, Any]]:
        since = int(time.time() * 1000) - window_seconds * 1000
        per: dict[str, list[tuple[bool, float]]] = {}
        for ms, stage, ok, seconds in self.items:
            if ms >= since:
                per.setdefault(stage, []).append((ok, seconds))
        out: dict[str, dict[str, Any]] = {}
        minutes = window_seconds / 60
        for stage, rows in per.items():
            durations = sorted(s for _, s in rows)
            done = sum(1 for ok, _ in rows if ok)
            out[stage] = {
                "completed": done,
                "failed": len(rows) - done,
                "throughput_per_minute": round(done / minutes, 3),
                "p95_seconds": round(_p95(durations), 3) if durations else None,
            }
        return out


def _p95(sorted_values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    rank = max(int(-(-95 * len(sorted_values) // 100)), 1)
    return sorted_values[rank - 1]


async def _heartbeats(deps: Deps) -> dict[str, dict[str, float]]:
    """stage → consumer → seconds since its last heartbeat (live workers only: the keys expire)."""
    r: Any = deps.redis
    prefix = deps.keys.worker_heartbeat("", "").removesuffix(":")  # "<ns>:worker:"
    names: list[str] = []
    async for key in r.scan_iter(match=deps.keys.worker_heartbeat_pattern(), count=500):
        names.append(key.decode() if isinstance(key, bytes) else str(key))
        if len(names) >= 2000:
            break
    out: dict[str, dict[str, float]] = {}
    if not names:
        return out
    now = time.time()
    for name, value in zip(names, await r.mget(names), strict=True):
        stage, _, consumer = name[len(prefix) :].partition(":")
        try:
            age = max(now - float(value), 0.0) if value is not None else None
        except ValueError:
            age = None
        if age is not None:
            out.setdefault(stage, {})[consumer] = round(age, 1)
    return out


async def _queue_row(deps: Deps, name: str, delayed: dict[str, int], beats: dict[str, float]) -> dict[str, Any]:
    stream, group = _stream(deps, name)
    g = await group_stats(deps.redis, stream, group, dead_letter_stream=deps.keys.dead_letter_stream(stream))
    consumers = await consumer_stats(deps.redis, stream, group)
    in_flight_age = await oldest_pending_age(deps.redis, stream, group) if g.pending else None
    rows = []
    seen = set()
    for c in consumers:
        seen.add(c.name)
        rows.append(
            {
                "name": c.name,
                "pending": c.pending,
                "idle_seconds": round(c.idle_ms / 1000, 1),
                "heartbeat_age_seconds": beats.get(c.name),
                "alive": c.name in beats if name != RESULTS else None,
            }
        )
    for consumer, age in beats.items():  # a live worker that has not joined the group yet
        if consumer not in seen:
            rows.append(
                {"name": consumer, "pending": 0, "idle_seconds": None, "heartbeat_age_seconds": age, "alive": True}
            )
    return {
        "name": name,
        "stream": stream,
        "group": group,
        "length": g.length,
        "waiting": g.waiting,
        "oldest_waiting_seconds": round(g.oldest_unread_age, 1) if g.waiting else None,
        "pending": g.pending,
        "oldest_pending_seconds": round(in_flight_age, 1) if in_flight_age is not None else None,
        "delayed": delayed.get(stream, 0),
        "dead_letters": g.dead_letters,
        "consumers": rows,
        "workers_alive": len(beats) if name != RESULTS else None,
    }


async def queues(request: web.Request, record: ResultWindow) -> web.Response:
    deps, _ = _admin(request)
    window = query_int(request, "window", 300, 60, WINDOW_MAX_SECONDS)
    await record.refresh(deps)
    stats = record.summary(window)
    delayed = await delayed_by_stream(deps.redis, deps.keys)
    beats = await _heartbeats(deps)
    empty = {"completed": 0, "failed": 0, "throughput_per_minute": 0.0, "p95_seconds": None}
    stages = []
    for stage in STAGES:
        row = await _queue_row(deps, stage, delayed, beats.get(stage, {}))
        stages.append({**row, **stats.get(stage, empty)})
    results = await _queue_row(deps, RESULTS, delayed, {})
    return respond(
        {
            "namespace": deps.keys.namespace,
            "generated_at": _iso_ms(int(time.time() * 1000)),
            "window_seconds": window,
            "stages": stages,
            "results": results,
            "delayed_total": sum(delayed.values()),
        }
    )


# --- dead letters -------------------------------------------------------------------------
def _describe(name: str, entry: DeadLetterEntry) -> dict[str, Any]:
    job_id = user_id = None
    dispatch = None
    try:
        if name == RESULTS:
            peek = msgspec.json.decode(entry.payload)
            job_id = peek.get("job_id") if isinstance(peek, dict) else None
        else:
            task = task_decoder.decode(entry.payload)
            job_id, user_id, dispatch = task.job_id, task.user_id, task.dispatch
    except (msgspec.DecodeError, ValueError):
        pass
    return {
        "stream": name,
        "entry_id": entry.entry_id,
        "message_id": entry.message_id,
        "code": entry.code,
        "error": entry.error,
        "attempts": entry.attempts,
        "history": entry.history,
        "dead_at": _iso_ms(entry.dead_at_ms),
        "job_id": job_id,
        "user_id": user_id,
        "dispatch": dispatch,
        "job_status": None,
    }


async def _with_job_status(deps: Deps, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = {u for i in items if (u := store.as_uuid(i["job_id"] or "")) is not None}
    if ids:
        rows = await deps.pool.fetch("SELECT job_id, status FROM jobs WHERE job_id = ANY($1::uuid[])", list(ids))
        status = {str(r["job_id"]): r["status"] for r in rows}
        for i in items:
            i["job_status"] = status.get(i["job_id"] or "")
    return items


async def list_dead_letters(request: web.Request) -> web.Response:
    deps, _ = _admin(request)
    limit = query_int(request, "limit", 50, 1, 500)
    names = [request.query["stream"]] if "stream" in request.query else [*STAGES, RESULTS]
    before = request.query.get("before")
    if before is not None:
        before = _entry_id(before, "before")
    items: list[dict[str, Any]] = []
    for name in names:
        stream, _ = _stream_param(deps, name)
        for entry in await dead_letters(deps.redis, deps.keys, stream, count=limit, before=before):
            items.append(_describe(name, entry))
    items.sort(key=lambda i: tuple(int(p) for p in i["entry_id"].split("-")), reverse=True)
    items = await _with_job_status(deps, items[:limit])
    return respond({"dead_letters": items})


async def _retry_stage(deps: Deps, actor: str, request_id: str, name: str, entry: DeadLetterEntry) -> dict[str, Any]:
    """Re-dispatch the stage of a dead-lettered task (see the module docstring); raises Conflict."""
    target = f"{name}/{entry.entry_id}"
    try:
        task = task_decoder.decode(entry.payload)
    except msgspec.DecodeError:
        raise Conflict("The dead letter is not a stage task; it can only be deleted") from None
    job_id = store.as_uuid(task.job_id)
    if job_id is None or task.stage != name:
        raise Conflict("The dead letter names no job of this stage; it can only be deleted")
    eff = Effects(job_id=str(job_id))
    async with deps.pool.acquire() as conn, conn.transaction():
        job = await store.lock_job(conn, job_id)
        stage_row = await store.get_stage(conn, job_id, name)
        reason = _why_not(job, stage_row, task.dispatch, name)
        if reason is not None:  # (logged by the caller, outside this transaction, which rolls back)
            raise Conflict(reason, job_id=str(job_id) if job is not None else None)
        assert job is not None
        was = job["status"]
        eff.total = job["total_cost"]
        await begin(deps, eff)
        if was == JobStatus.FAILED:
            job = await conn.fetchrow(
                "UPDATE jobs SET status = 'processing', error_message = NULL, error_code = NULL,"
                " completed_at = NULL, files_expire_at = NULL, updated_at = now(),"
                " deadline_at = now() + make_interval(secs => $2) WHERE job_id = $1 RETURNING *",
                job_id,
                deps.settings.job_timeout_seconds,
            )
            # The failure set the cancel flag for workers still on the job; none is (it failed).
            await deps.redis.delete(deps.keys.job_cancel(str(job_id)))
        eff.row = job
        eff.event(deps, MessageData(text=f"An operator retried {name}", stage=name))
        dispatched = await dispatch_stage(conn, deps, job, name, eff)
        outbox_id = await deps.outbox.add(conn, job_id, eff.emits)
        detail = {"stage": name, "was": was, "dispatched": dispatched, "old_dispatch": task.dispatch}
        await record_action(conn, actor, "dead_letter.retry", target, job_id, "done", detail, request_id)
    if was == JobStatus.FAILED:  # re-opened: the log's earlier error is no longer the job's end
        await withdraw_final_events(deps.redis, deps.keys, str(job_id))
    await after_commit(deps, eff)
    await delete_dead_letter(deps.redis, deps.keys, deps.keys.stage_stream(name), entry.entry_id)
    await deps.outbox.send_quietly(outbox_id)
    status = eff.row["status"] if eff.row is not None else None
    log.info("admin_dead_letter_retried", job_id=str(job_id), stage=name, actor=actor, was=was, now=status)
    return {"entry_id": entry.entry_id, "outcome": "retried", "job_id": str(job_id), "job_status": status}


def _why_not(job: asyncpg.Record | None, stage_row: asyncpg.Record | None, dispatch: int, name: str) -> str | None:
    if job is None:
        return "The job no longer exists"
    if job["status"] == JobStatus.COMPLETED:
        return "The job has completed since; nothing to retry"
    if job["status"] == JobStatus.FAILED and job["error_code"] == ErrorCode.CANCELLED:
        return "The job was cancelled; it is not retried"
    if job["files_cleaned_at"] is not None:
        return "The job's files were cleaned up; it cannot be resumed"
    if job["current_stage"] != name:
        return f"The job has moved on to {job['current_stage']}"
    if stage_row is None or stage_row["dispatch"] != dispatch:
        return "The stage was dispatched again since this dead letter"
    return None


async def _retry_one(deps: Deps, actor: str, request_id: str, name: str, entry_id: str) -> dict[str, Any]:
    stream, _ = _stream(deps, name)
    target = f"{name}/{entry_id}"
    if name == RESULTS:
        new = await requeue_dead_letter(deps.redis, deps.keys, stream, entry_id)
        outcome = "done" if new else "not_found"
        await record_action(
            deps.pool, actor, "dead_letter.retry", target, None, outcome, {"new_entry": new}, request_id
        )
        if new is None:
            raise NotFound("No such dead letter (already retried or deleted?)")
        return {"entry_id": entry_id, "outcome": "requeued", "new_entry_id": new}
    entry = await dead_letter(deps.redis, deps.keys, stream, entry_id)
    if entry is None:
        await record_action(deps.pool, actor, "dead_letter.retry", target, None, "not_found", {}, request_id)
        raise NotFound("No such dead letter (already retried or deleted?)")
    try:
        return await _retry_stage(deps, actor, request_id, name, entry)
    except Conflict as err:
        job_id = store.as_uuid(err.job_id or "")
        detail = {"reason": err.message}
        await record_action(deps.pool, actor, "dead_letter.retry", target, job_id, "conflict", detail, request_id)
        raise


async def retry_dead_letter(request: web.Request) -> web.Response:
    deps, actor = _admin(request)
    name = request.match_info["stream"]
    _stream(deps, name)
    entry_id = _entry_id(request.match_info["entry_id"])
    return respond(await _retry_one(deps, actor, request[REQUEST_ID], name, entry_id))


async def retry_all_dead_letters(request: web.Request) -> web.Response:
    """Retry every dead letter of a stream, oldest first (at most ``limit``); each one on its own."""
    deps, actor = _admin(request)
    name = request.match_info["stream"]
    stream, _ = _stream(deps, name)
    limit = query_int(request, "limit", 100, 1, RETRY_ALL_MAX)
    outcomes: list[dict[str, Any]] = []
    entries = await dead_letters(deps.redis, deps.keys, stream, count=limit, oldest_first=True)
    for entry in entries:
        try:
            outcomes.append(await _retry_one(deps, actor, request[REQUEST_ID], name, entry.entry_id))
        except (Conflict, NotFound) as err:
            kind = "conflict" if isinstance(err, Conflict) else "not_found"
            outcomes.append({"entry_id": entry.entry_id, "outcome": kind, "reason": err.message})
    retried = sum(1 for o in outcomes if o["outcome"] in ("retried", "requeued"))
    return respond({"stream": name, "retried": retried, "skipped": len(outcomes) - retried, "outcomes": outcomes})


async def delete_dead_letter_route(request: web.Request) -> web.Response:
    deps, actor = _admin(request)
    name = request.match_info["stream"]
    stream, _ = _stream(deps, name)
    entry_id = _entry_id(request.match_info["entry_id"])
    entry = await dead_letter(deps.redis, deps.keys, stream, entry_id)
    job_id = None
    if entry is not None:
        job_id = store.as_uuid(str(_describe(name, entry)["job_id"] or ""))
    deleted = await delete_dead_letter(deps.redis, deps.keys, stream, entry_id)
    outcome = "done" if deleted else "not_found"
    await record_action(deps.pool, actor, "dead_letter.delete", f"{name}/{entry_id}", job_id, outcome, {},
                        request[REQUEST_ID])  # fmt: skip
    if not deleted:
        raise NotFound("No such dead letter (already retried or deleted?)")
    log.info("admin_dead_letter_deleted", stream=name, entry=entry_id, actor=actor)
    return respond({"entry_id": entry_id, "outcome": "deleted"})


# --- jobs ---------------------------------------------------------------------------------
async def search_jobs(request: web.Request) -> web.Response:
    """Newest first; ``q`` is a job id or a user id (exact), ``status`` filters."""
    deps, _ = _admin(request)
    limit = query_int(request, "limit", 20, 1, 100)
    offset = query_int(request, "offset", 0, 0, 1_000_000)
    q = query_text(request, "q", 200)
    status = request.query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(JOB_STATUSES)}")
    where, args = [], []
    if q:
        job_id = store.as_uuid(q)
        args.append(job_id if job_id is not None else q)
        where.append("job_id = $1" if job_id is not None else "user_id = $1")
    if status:
        args.append(status)
        where.append(f"status = ${len(args)}")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = await deps.pool.fetchval(f"SELECT count(*) FROM jobs {clause}", *args)
    rows = await deps.pool.fetch(
        f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, job_id LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args,
        limit,
        offset,
    )
    jobs = [{**snapshot(r), "user_id": r["user_id"]} for r in rows]
    return respond({"jobs": jobs, "total": total, "limit": limit, "offset": offset})


def _job_uuid(request: web.Request) -> uuid.UUID:
    job_id = store.as_uuid(request.match_info["job_id"])
    if job_id is None:
        raise NotFound("Job not found")
    return job_id


async def _job_events(deps: Deps, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    r: Any = deps.redis
    rows = await r.xrange(deps.keys.job_events_stream(job_id), count=limit)
    out = []
    for raw_id, fields in rows:
        eid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        try:
            ev = decode_event(fields[b"m"])
        except (msgspec.DecodeError, KeyError):
            continue
        out.append(
            {"id": eid, "at": _iso_ms(int(eid.split("-")[0])), "event": ev.event, "data": msgspec.to_builtins(ev.data)}
        )
    return out


async def _job_dead_letters(deps: Deps, job_id: str) -> list[dict[str, Any]]:
    found = []
    for name in STAGES:
        stream = deps.keys.stage_stream(name)
        for entry in await dead_letters(deps.redis, deps.keys, stream, count=200):
            item = _describe(name, entry)
            if item["job_id"] == job_id:
                found.append(item)
    return found


async def job_detail(request: web.Request) -> web.Response:
    deps, _ = _admin(request)
    job_id = _job_uuid(request)
    row = await store.get_job(deps.pool, job_id)
    if row is None:
        raise NotFound("Job not found", job_id=str(job_id))
    stage_rows = {
        r["stage_name"]: r for r in await deps.pool.fetch("SELECT * FROM job_stages WHERE job_id = $1", job_id)
    }
    stages = []
    for name in STAGES:
        s = stage_rows.get(name)
        meta = s["metadata"] if s is not None else None
        stages.append(
            {
                "stage": name,
                "status": s["status"] if s is not None else StageStatus.PENDING,
                "dispatch": s["dispatch"] if s is not None else 0,
                "attempts": s["attempts"] if s is not None else 0,
                "started_at": store.iso(s["started_at"]) if s is not None else None,
                "completed_at": store.iso(s["completed_at"]) if s is not None else None,
                "duration_seconds": s["duration_seconds"] if s is not None else None,
                "error": s["error"] if s is not None else None,
                "metadata": msgspec.json.decode(meta) if isinstance(meta, str | bytes) else (meta or {}),
            }
        )
    costs = await deps.pool.fetch(
        "SELECT stage_name, api_name, call_id, cost, created_at FROM job_costs WHERE job_id = $1 ORDER BY id", job_id
    )
    files: list[dict[str, Any]] = []
    for prefix in layout.job_prefixes(str(job_id), row["user_id"]):
        try:
            listed = await deps.storage.list(prefix)
        except Exception as exc:  # a storage outage must not hide the rest of the page
            log.warning("admin_file_list_failed", prefix=prefix, error=str(exc)[:200])
            continue
        files.extend(
            {"key": o.key, "size": o.size, "modified_at": _iso_ms(int(o.modified_at * 1000))} for o in listed[:500]
        )
    actions_rows = await deps.pool.fetch(
        "SELECT * FROM admin_actions WHERE job_id = $1 ORDER BY id DESC LIMIT 50", job_id
    )
    job = {
        **snapshot(row),
        "user_prompt": row["user_prompt"],
        "audio_filename": row["audio_filename"],
        "audio_duration": row["audio_duration"],
        "cost_limit": row["cost_limit"],
        "started_at": store.iso(row["started_at"]),
        "deadline_at": store.iso(row["deadline_at"]),
    }
    body = {
        "job": job,
        "stages": stages,
        "events": await _job_events(deps, str(job_id)),
        "costs": [
            {
                "stage": c["stage_name"],
                "api_name": c["api_name"],
                "call_id": c["call_id"],
                "cost": c["cost"],
                "created_at": store.iso(c["created_at"]),
            }
            for c in costs
        ],
        "errors": [
            *(
                [{"where": "job", "code": row["error_code"], "message": row["error_message"]}]
                if row["error_message"]
                else []
            ),
            *({"where": s["stage"], "code": None, "message": s["error"]} for s in stages if s["error"]),
        ],
        "dead_letters": await _job_dead_letters(deps, str(job_id)),
        "files": files,
        "actions": [_action_row(a) for a in actions_rows],
        "cancellable": row["status"] not in FINAL_STATUSES,
    }
    return respond(body)


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel any user's queued or running job (as the user's own cancel does), logged."""
    deps, actor = _admin(request)
    job_id = _job_uuid(request)
    eff = Effects(job_id=str(job_id))
    target = f"job/{job_id}"
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await store.lock_job(conn, job_id)
        if row is None:
            await record_action(conn, actor, "job.cancel", target, None, "not_found", {}, request[REQUEST_ID])
            missing = True
        else:
            missing = False
            if row["status"] in FINAL_STATUSES:
                detail = {"status": row["status"]}
                await record_action(conn, actor, "job.cancel", target, job_id, "conflict", detail, request[REQUEST_ID])
            else:
                await fail_job(conn, deps, eff, ErrorCode.CANCELLED, OPERATOR_CANCEL_MESSAGE)
                outbox_id = await deps.outbox.add(conn, job_id, eff.emits)
                detail = {"was": row["status"], "stage": row["current_stage"]}
                await record_action(conn, actor, "job.cancel", target, job_id, "done", detail, request[REQUEST_ID])
    if missing:
        raise NotFound("Job not found", job_id=str(job_id))
    assert row is not None
    if row["status"] in FINAL_STATUSES:
        raise Conflict(f"Job already {row['status']}; it cannot be cancelled", job_id=str(job_id))
    eff.delete_prefixes = layout.intermediate_prefixes(str(job_id))
    await after_commit(deps, eff)
    await deps.outbox.send_quietly(outbox_id)
    log.info("admin_job_cancelled", job_id=str(job_id), actor=actor)
    return respond({"job_id": str(job_id), "status": JobStatus.FAILED, "message": OPERATOR_CANCEL_MESSAGE})


def handlers() -> dict[str, Handler]:
    """The admin routes' handlers by operation id (``routes.handlers()`` includes them); one result window per call."""
    window = ResultWindow()

    async def queues_route(request: web.Request) -> web.Response:
        return await queues(request, window)

    return {
        "getAdminQueues": queues_route,
        "listAdminDeadLetters": list_dead_letters,
        "retryAllAdminDeadLetters": retry_all_dead_letters,
        "retryAdminDeadLetter": retry_dead_letter,
        "deleteAdminDeadLetter": delete_dead_letter_route,
        "searchAdminJobs": search_jobs,
        "getAdminJob": job_detail,
        "cancelAdminJob": cancel_job,
        "listAdminActions": actions,
    }
