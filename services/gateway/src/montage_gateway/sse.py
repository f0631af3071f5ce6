"""``GET /api/v1/jobs/{job_id}/stream``: Server-Sent Events of one job (protocol: ``docs/sse.md``).

Order on the wire:

1. ``event: state`` with ``id:`` = the resume point *P*: the job as the orchestrator reports it
   now (``job_id``, ``status``, ``current_stage``, ``progress``, ``estimated_remaining``,
   ``total_cost``, ``video_url``, ``error_message``, ``error_code``), which reflects at least
   every logged event up to *P*. *P* is ``Last-Event-ID`` (header, else ``?last_event_id=``) when
   the client sent one; on a fresh connection it is the newest logged event, read *before* the
   snapshot, so old events (an earlier ``cost_update``, the final ``completed``) are not sent
   again as if new. ``Last-Event-ID: 0-0`` asks for the whole log.
2. Every logged event after *P*, each with its ``id:``.
3. Live events, each with its ``id:``; ``heartbeat`` without ``id:`` every 30 s.

The client joins the hub (its channel subscription confirmed) *before* the log is read, and
live events are buffered meanwhile; anything at or before the last replayed id is skipped. So a
reconnecting client gets every event exactly once, in order. After ``completed`` or ``error``
the stream is closed 30 s later; a client that resumes after the final event gets ``204 No
Content``, which tells an ``EventSource`` to stop reconnecting. A job final in Postgres whose
final event Redis lost (failover, restore, ``FLUSHALL``) gets one rebuilt from its state, with
an id no logged entry has (sequence 2^64-1), so no client waits for it forever.

A stream whose client goes away ends at once (the server does not cancel handlers; see
:func:`montage_common.web.on_connection_lost`), releasing its connection slot.

Auth: ``Authorization: Bearer`` or ``?ticket=`` (see :mod:`montage_gateway.tickets`). Ownership
is the orchestrator's ``GET /api/v1/jobs/{job_id}`` answered for this user; its 403/404 pass
through unchanged.

``GET /api/v1/events`` (:meth:`StreamHandler.user_stream`) is the same protocol over the user's
log of all their jobs' events (``montage_common.user_events``): ``state`` first (the user's active
jobs, its ``id:`` the resume point in the user's log), the log after it, then live events from the
user's channel, each message's data with its ``job_id``. It holds one user slot (no job slot) and
never ends by itself: one job's final event is not the stream's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import structlog
from aiohttp import web
from montage_common.events import id_key, last_event, replay, valid_event_id
from montage_common.redis import REDIS_DOWN
from montage_common.user_events import last_user_event, render_user_event, replay_user
from montage_common.web import HEADER_REQUEST_ID, REQUEST_ID, json_response, on_connection_lost
from montage_contracts.api import CompletedData, ErrorData, JobList, JobListItem, StateData, StreamTicket, UserStateData
from montage_contracts.errors import ErrorCode, ServiceUnavailable, Unauthorized, ValidationError, job_retryable
from montage_contracts.events import STATE_EVENT
from montage_contracts.keys import Keys
from montage_contracts.pipeline import FINAL_STATUSES, JobStatus
from montage_contracts.routes import route
from redis.asyncio import Redis

from montage_gateway.auth import Authenticator, request_user
from montage_gateway.hub import Client, Frame, Hub, render
from montage_gateway.metrics import AUTH_FAILURES, SSE_DELIVERED, SSE_DROPPED, SSE_OPEN
from montage_gateway.proxy import Forwarder, Upstream
from montage_gateway.pubsub import SubscriberUnavailable
from montage_gateway.slots import ConnectionSlots
from montage_gateway.tickets import EVENTS_SCOPE, TicketStore

GET_JOB = route("getJob")  # the owner check and the snapshot: the orchestrator's answer for this user
LIST_JOBS = route("listJobs")  # the user stream's state: the user's active jobs
ACTIVE = (JobStatus.PROCESSING, JobStatus.QUEUED)
_job_list = msgspec.json.Decoder(JobList)

log = structlog.get_logger()

# The job as the orchestrator answers it (``api.Job``), read as the ``state`` event's payload:
# the fields they share, in the payload's order.
_state = msgspec.json.Decoder(StateData)
_DELIVERED = {kind: SSE_DELIVERED.labels(kind) for kind in ("event", "state", "heartbeat")}


# The id sequence of a final event rebuilt from Postgres (a real entry never has it): a client that
# resumes after it has seen the end and gets 204.
REBUILT_SEQ = 2**64 - 1


def rebuilt_final(state: StateData, after: str) -> bytes:
    """``completed`` or ``error`` from the job's state, when its logged final event is gone: the
    payload the orchestrator logged, as far as the state tells it (``retryable`` by the same rule)."""
    entry_id = f"{id_key(after)[0]}-{REBUILT_SEQ}"
    if state.status == JobStatus.COMPLETED:
        # No URL once the video expired (its files cleaned): the event says so with an empty one.
        return render(CompletedData(video_url=state.video_url or "", total_cost=state.total_cost), entry_id)
    code = ErrorCode(state.error_code) if state.error_code else ErrorCode.MODULE_FAILURE
    error = state.error_message or "Job failed"
    return render(ErrorData(error=error, code=code, retryable=job_retryable(code)), entry_id)


class _Gone(Exception):
    """The client's connection is dead or too slow."""


class StreamHandler:
    def __init__(
        self,
        *,
        hub: Hub,
        slots: ConnectionSlots,
        tickets: TicketStore,
        auth: Authenticator,
        forwarder: Forwarder,
        orchestrator: Upstream,
        redis: Redis,
        keys: Keys,
        close_after_final: float,
        write_timeout: float,
    ) -> None:
        self.hub = hub
        self.slots = slots
        self.tickets = tickets
        self.auth = auth
        self.forwarder = forwarder
        self.orchestrator = orchestrator
        self.redis = redis
        self.keys = keys
        self.close_after_final = close_after_final
        self.write_timeout = write_timeout

    async def _user(self, request: web.Request, scope: str) -> str:
        """The caller: its bearer token, or a ticket for ``scope`` (a job id, or the user's events)."""
        ticket = request.query.get("ticket")
        if ticket is None:
            return await self.auth.authenticate(request)
        user = await self.tickets.redeem(ticket, scope)
        if user is None:
            AUTH_FAILURES.labels("bad_ticket").inc()
            raise Unauthorized("Invalid or expired stream ticket")
        return user

    async def ticket(self, request: web.Request) -> web.Response:
        """``POST /api/v1/jobs/{job_id}/stream-ticket`` → ``{ticket, expires_in}`` (owner only)."""
        job_id = request.match_info["job_id"]
        user = request_user(request)
        reply = await self.forwarder.call(
            self.orchestrator, "GET", GET_JOB.url(job_id=job_id), request_id=request[REQUEST_ID], user_id=user
        )
        if reply.status != 200:
            return web.Response(status=reply.status, body=reply.body, content_type="application/json")
        ticket = await self.tickets.issue(user, job_id)
        return json_response(StreamTicket(ticket=ticket, expires_in=self.tickets.ttl_seconds), status=201)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        user = await self._user(request, job_id)
        # Read before the snapshot: the snapshot then reflects every event up to it (the
        # orchestrator commits a change before it logs its events).
        newest = await last_event(self.redis, self.keys, job_id)
        reply = await self.forwarder.call(
            self.orchestrator, "GET", GET_JOB.url(job_id=job_id), request_id=request[REQUEST_ID], user_id=user
        )
        if reply.status != 200:
            return web.Response(status=reply.status, body=reply.body, content_type="application/json")
        # The job id as the client wrote it (the orchestrator's is the canonical form of the same UUID).
        state = msgspec.structs.replace(_state.decode(reply.body), job_id=job_id)
        sent = (request.headers.get("Last-Event-ID"), request.query.get("last_event_id"))
        if any(v is not None and not valid_event_id(v) for v in sent):  # each one sent must be an id
            raise ValidationError("Last-Event-ID must be an event id this stream sent (<ms>-<seq>)", job_id=job_id)
        resume = sent[0] or sent[1]
        if resume is not None and (
            (newest is not None and newest[1].final and id_key(resume) >= id_key(newest[0]))
            or id_key(resume)[1] == REBUILT_SEQ
        ):
            # The client has seen the job's final event: nothing will ever follow. 204 is what
            # makes an EventSource stop reconnecting.
            return web.Response(status=204, headers={HEADER_REQUEST_ID: request[REQUEST_ID]})
        after = resume if resume is not None else newest[0] if newest is not None else "0-0"
        logged_final = newest is not None and newest[1].final
        async with self._connected(request, user, job_id) as client:
            return await self._serve(
                request,
                client,
                lambda resp: self._replay_job(resp, job_id, state, after, client, logged_final),
                "sse_replay_failed",
                job_id=job_id,
            )

    async def _replay_job(  # noqa: PLR0917
        self,
        resp: web.StreamResponse,
        job_id: str,
        state: StateData,
        after: str,
        client: Client,
        logged_final: bool,
    ) -> tuple[int, int]:
        """The job's ``state``, its logged events after ``after`` and, when Redis lost its final event,
        one rebuilt; the last id sent. A final job's stream closes ``close_after_final`` later."""
        await self._write(resp, Frame(render(state, after), kind="state"))
        if state.status in FINAL_STATUSES:
            client.close_later(self.close_after_final)
        last = id_key(after)
        for entry_id, event in await replay(self.redis, self.keys, job_id, after=after):
            final = event.final
            await self._write(resp, Frame(render(event.data, entry_id), id_key(entry_id), final))
            last = id_key(entry_id)
            if final:
                client.close_later(self.close_after_final)
                logged_final = True
        if state.status in FINAL_STATUSES and not logged_final:
            # Redis lost the job's final event (docs/operations.md, Redis): rebuild it from
            # the state so no client waits for it forever.
            rebuilt = rebuilt_final(state, after)
            await self._write(resp, Frame(rebuilt, (id_key(after)[0], REBUILT_SEQ), True))
            last = (id_key(after)[0], REBUILT_SEQ)
        return last

    @contextlib.asynccontextmanager
    async def _connected(self, request: web.Request, user: str, job_id: str | None) -> AsyncIterator[Client]:
        """A connection slot (the job's and the user's; a user stream's, the user's only) and a client
        of the hub (the job's live events, else all the user's), subscribed before the log is read;
        both let go when the stream ends."""
        lease = await self.slots.acquire(job_id, user)
        try:
            try:
                client = await (self.hub.join(job_id) if job_id is not None else self.hub.join_user(user))
            except SubscriberUnavailable:
                raise ServiceUnavailable("Live events are unavailable; retry shortly", job_id=job_id) from None
            # The server does not cancel a handler whose client went away: wake the loop at
            # once so the slot is released now, not at the next heartbeat write.
            on_connection_lost(request, lambda: client.close("client_gone"))
            SSE_OPEN.inc()
            try:
                yield client
            finally:
                SSE_OPEN.dec()
                self.hub.leave(client)
        finally:
            await self.slots.release(lease)

    async def _serve(
        self,
        request: web.Request,
        client: Client,
        replayed: Callable[[web.StreamResponse], Awaitable[tuple[int, int]]],
        failed: str,
        **context: str,
    ) -> web.StreamResponse:
        """The stream: what ``replayed`` writes (the state and the log; it returns the last id sent),
        then the client's live frames after that id until the client is closed (a job's final event
        closes it ``close_after_final`` later). A failed replay is logged as ``failed``."""
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache, no-transform",
                "X-Accel-Buffering": "no",
                HEADER_REQUEST_ID: request[REQUEST_ID],
            }
        )
        await resp.prepare(request)
        reason = "client_gone"
        try:
            last = await replayed(resp)
            while (frame := await client.queue.get()) is not None:
                if frame.key is not None:
                    if frame.key <= last:
                        continue  # already sent by the replay
                    last = frame.key
                await self._write(resp, frame)
                if frame.final:  # a job's final event (a user stream's frames never are)
                    client.close_later(self.close_after_final)
            reason = client.close_reason
        except _Gone:
            SSE_DROPPED.labels("write_failed").inc()
            return resp
        except REDIS_DOWN as exc:  # the replay failed: end the stream, the client resumes from its last id
            log.warning(failed, **context, error=type(exc).__name__)
            SSE_DROPPED.labels("redis_error").inc()
            reason = "redis_error"
        if reason not in ("job_finished", "redis_error"):
            SSE_DROPPED.labels(reason or "closed").inc()
        try:
            async with asyncio.timeout(self.write_timeout):
                await resp.write_eof()
        except (ConnectionError, TimeoutError, RuntimeError):
            pass
        return resp

    async def _write(self, resp: web.StreamResponse, frame: Frame) -> None:
        try:
            async with asyncio.timeout(self.write_timeout):
                await resp.write(frame.data)
        except (ConnectionError, TimeoutError, RuntimeError):
            raise _Gone from None
        _DELIVERED[frame.kind].inc()

    # --- GET /api/v1/events: every event of every job of the caller ------------------------------
    async def events_ticket(self, request: web.Request) -> web.Response:
        """``POST /api/v1/events/ticket`` → ``{ticket, expires_in}`` for the caller's own event stream."""
        ticket = await self.tickets.issue(request_user(request), EVENTS_SCOPE)
        return json_response(StreamTicket(ticket=ticket, expires_in=self.tickets.ttl_seconds), status=201)

    async def _active_jobs(self, request: web.Request, user: str) -> list[JobListItem]:
        jobs: list[JobListItem] = []
        for status in ACTIVE:
            reply = await self.forwarder.call(
                self.orchestrator,
                "GET",
                f"{LIST_JOBS.path}?status={status.value}&limit=50",
                request_id=request[REQUEST_ID],
                user_id=user,
            )
            if reply.status != 200:
                raise ServiceUnavailable("The job list is unavailable; retry shortly")
            jobs.extend(_job_list.decode(reply.body).jobs)
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    async def user_stream(self, request: web.Request) -> web.StreamResponse:
        user = await self._user(request, EVENTS_SCOPE)
        sent = (request.headers.get("Last-Event-ID"), request.query.get("last_event_id"))
        if any(v is not None and not valid_event_id(v) for v in sent):  # each one sent must be an id
            raise ValidationError("Last-Event-ID must be an event id this stream sent (<ms>-<seq>)")
        resume = sent[0] or sent[1]
        newest = await last_user_event(self.redis, self.keys, user)  # before the state, as for a job
        state = UserStateData(jobs=await self._active_jobs(request, user))
        after = resume if resume is not None else newest or "0-0"
        async with self._connected(request, user, None) as client:
            return await self._serve(
                request, client, lambda resp: self._replay_user(resp, user, state, after), "sse_user_replay_failed"
            )

    async def _replay_user(
        self, resp: web.StreamResponse, user: str, state: UserStateData, after: str
    ) -> tuple[int, int]:
        """The user's ``state`` and the events of their log after ``after``; the last id sent."""
        await self._write(resp, Frame(render(state, after, STATE_EVENT), kind="state"))
        last = id_key(after)
        for ev in await replay_user(self.redis, self.keys, user, after=after):
            await self._write(resp, Frame(render_user_event(ev), id_key(ev.entry_id)))
            last = id_key(ev.entry_id)
        return last
