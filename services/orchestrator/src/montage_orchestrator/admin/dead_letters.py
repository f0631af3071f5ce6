"""Dead letters: list, retry (one, or all of a stream), delete; every action logged.

A stage task is dead-lettered after its last retry or on a permanent error, and the worker's
hook reports a failed ``StageResult``: by the time an operator sees the dead letter, the job has
usually failed (or, for ``scene_planner``/``reference_generator``, moved on with a fallback).
Putting the old task back on the stream would not help: its ``dispatch`` is stale, so its result
would be ignored. A *retry* therefore re-dispatches the stage through the job's state machine
(the owner's transitions: :func:`~montage_orchestrator.pipeline.dispatch_stage`, the outbox,
:func:`~montage_orchestrator.transitions.after_commit`), in one Postgres transaction with the job
row locked:

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

Anything else is 409 ``CONFLICT`` with the reason (the entry stays; delete it). A dead letter of
the results stream is the orchestrator's own input: it goes back onto the results stream as is
(the pipeline ignores stale or already-handled results). Deleting removes the entry only. Every
action (also on entries that no longer exist) is written to ``admin_actions``.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
import msgspec
import structlog
from aiohttp import web
from montage_common.events import withdraw_final_events
from montage_common.web import REQUEST_ID, query_int
from montage_contracts import api
from montage_contracts.api import MessageData, timestamp_ms
from montage_contracts.errors import Conflict, ErrorCode, NotFound
from montage_contracts.messages import task_decoder
from montage_contracts.pipeline import STAGES, JobStatus
from montage_streams import DeadLetterEntry, dead_letter, dead_letters, delete_dead_letter, requeue_dead_letter

from montage_orchestrator import store
from montage_orchestrator.admin.access import RESULTS, STREAMS, admin, entry_id, stream_of, stream_param
from montage_orchestrator.admin.actions import Outcome, record_action
from montage_orchestrator.deps import Deps
from montage_orchestrator.http import respond
from montage_orchestrator.pipeline import dispatch_stage
from montage_orchestrator.transitions import Effects, after_commit, begin

log = structlog.get_logger()

RETRY_ALL_MAX = 200
_MISSING = "No such dead letter (already retried or deleted?)"


def describe(name: str, entry: DeadLetterEntry) -> api.AdminDeadLetter:
    """A dead letter of stream ``name`` as the console shows it (the job's status filled in later)."""
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
    return api.AdminDeadLetter(
        stream=name,
        entry_id=entry.entry_id,
        message_id=entry.message_id,
        code=entry.code,
        error=entry.error,
        attempts=entry.attempts,
        history=entry.history,
        dead_at=timestamp_ms(entry.dead_at_ms),
        job_id=job_id if isinstance(job_id, str) else None,
        user_id=user_id,
        dispatch=dispatch,
        job_status=None,
    )


async def with_job_status(deps: Deps, items: list[api.AdminDeadLetter]) -> list[api.AdminDeadLetter]:
    ids = {u for i in items if (u := store.as_uuid(i.job_id or "")) is not None}
    if ids:
        rows = await deps.pool.fetch("SELECT job_id, status FROM jobs WHERE job_id = ANY($1::uuid[])", list(ids))
        status = {str(r["job_id"]): JobStatus(r["status"]) for r in rows}
        for i in items:
            i.job_status = status.get(i.job_id or "")
    return items


async def list_dead_letters(request: web.Request) -> web.Response:
    deps, _ = admin(request)
    limit = query_int(request, "limit", 50, 1, 500)
    names = [request.query["stream"]] if "stream" in request.query else list(STREAMS)
    before = request.query.get("before")
    if before is not None:
        before = entry_id(before, "before")
    items: list[api.AdminDeadLetter] = []
    for name in names:
        stream, _ = stream_param(deps, name)
        for entry in await dead_letters(deps.redis, deps.keys, stream, count=limit, before=before):
            items.append(describe(name, entry))
    items.sort(key=lambda i: tuple(int(p) for p in i.entry_id.split("-")), reverse=True)
    return respond(api.AdminDeadLetters(dead_letters=await with_job_status(deps, items[:limit])))


async def job_dead_letters(deps: Deps, job_id: str) -> list[api.AdminDeadLetter]:
    """The dead letters of one job's stage tasks (the job page)."""
    found = []
    for name in STAGES:
        stream = deps.keys.stage_stream(name)
        for entry in await dead_letters(deps.redis, deps.keys, stream, count=200):
            item = describe(name, entry)
            if item.job_id == job_id:
                found.append(item)
    return found


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


async def _retry_stage(deps: Deps, actor: str, request_id: str, name: str, entry: DeadLetterEntry) -> api.AdminRetried:
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
        was = JobStatus(job["status"])
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
    status = JobStatus(eff.row["status"]) if eff.row is not None else None
    log.info("admin_dead_letter_retried", job_id=str(job_id), stage=name, actor=actor, was=was, now=status)
    return api.AdminRetried(entry_id=entry.entry_id, outcome="retried", job_id=str(job_id), job_status=status)


async def _retry_one(deps: Deps, actor: str, request_id: str, name: str, entry_id: str) -> api.AdminRetried:
    stream, _ = stream_of(deps, name)
    target = f"{name}/{entry_id}"
    if name == RESULTS:
        new = await requeue_dead_letter(deps.redis, deps.keys, stream, entry_id)
        outcome: Outcome = "done" if new else "not_found"
        await record_action(
            deps.pool, actor, "dead_letter.retry", target, None, outcome, {"new_entry": new}, request_id
        )
        if new is None:
            raise NotFound(_MISSING)
        return api.AdminRetried(entry_id=entry_id, outcome="requeued", new_entry_id=new)
    entry = await dead_letter(deps.redis, deps.keys, stream, entry_id)
    if entry is None:
        await record_action(deps.pool, actor, "dead_letter.retry", target, None, "not_found", {}, request_id)
        raise NotFound(_MISSING)
    try:
        return await _retry_stage(deps, actor, request_id, name, entry)
    except Conflict as err:
        job_id = store.as_uuid(err.job_id or "")
        detail = {"reason": err.message}
        await record_action(deps.pool, actor, "dead_letter.retry", target, job_id, "conflict", detail, request_id)
        raise


async def retry_dead_letter(request: web.Request) -> web.Response:
    deps, actor = admin(request)
    name = request.match_info["stream"]
    stream_of(deps, name)
    entry = entry_id(request.match_info["entry_id"])
    return respond(await _retry_one(deps, actor, request[REQUEST_ID], name, entry))


async def retry_all_dead_letters(request: web.Request) -> web.Response:
    """Retry every dead letter of a stream, oldest first (at most ``limit``); each one on its own."""
    deps, actor = admin(request)
    name = request.match_info["stream"]
    stream, _ = stream_of(deps, name)
    limit = query_int(request, "limit", 100, 1, RETRY_ALL_MAX)
    outcomes: list[api.AdminRetryOutcome] = []
    entries = await dead_letters(deps.redis, deps.keys, stream, count=limit, oldest_first=True)
    for entry in entries:
        try:
            done = await _retry_one(deps, actor, request[REQUEST_ID], name, entry.entry_id)
        except (Conflict, NotFound) as err:
            kind: Literal["conflict", "not_found"] = "conflict" if isinstance(err, Conflict) else "not_found"
            outcomes.append(api.AdminRetryOutcome(entry_id=entry.entry_id, outcome=kind, reason=err.message))
            continue
        outcomes.append(msgspec.convert(msgspec.to_builtins(done), api.AdminRetryOutcome))
    retried = sum(1 for o in outcomes if o.outcome in ("retried", "requeued"))
    return respond(api.AdminRetryAll(stream=name, retried=retried, skipped=len(outcomes) - retried, outcomes=outcomes))


async def delete_dead_letter_route(request: web.Request) -> web.Response:
    deps, actor = admin(request)
    name = request.match_info["stream"]
    stream, _ = stream_of(deps, name)
    entry = entry_id(request.match_info["entry_id"])
    found = await dead_letter(deps.redis, deps.keys, stream, entry)
    job_id = None if found is None else store.as_uuid(describe(name, found).job_id or "")
    deleted = await delete_dead_letter(deps.redis, deps.keys, stream, entry)
    outcome: Outcome = "done" if deleted else "not_found"
    await record_action(deps.pool, actor, "dead_letter.delete", f"{name}/{entry}", job_id, outcome, {},
                        request[REQUEST_ID])  # fmt: skip
    if not deleted:
        raise NotFound(_MISSING)
    log.info("admin_dead_letter_deleted", stream=name, entry=entry, actor=actor)
    return respond(api.AdminDeleted(entry_id=entry, outcome="deleted"))
