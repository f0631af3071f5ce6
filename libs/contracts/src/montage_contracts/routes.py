"""Every HTTP route of Montage, once: the table the services bind to and the document is made from.

A :class:`Route` says what a route is (method, path, ``operationId``), what it takes and answers
(parameters, body and every status with its body type: the Structs of :mod:`montage_contracts.api`),
who may call it (:class:`Auth`) and which service serves it (:class:`Service`). From :data:`ROUTES`:

- the orchestrator and ragnarok-proxy bind their handlers (``montage_common.routing.bind``: a
  handler per ``operation_id``; startup fails on a route without a handler or a handler without
  a route);
- the gateway serves its own routes the same way and forwards exactly the non-internal routes of
  the orchestrator and ragnarok-proxy (no hand-written list, no prefix forwarding);
- the OpenAPI document (``montage_gateway.openapi``, committed as ``clients/openapi.json``) is
  generated from the non-internal routes and the Structs.

Adding a route: one entry here (:func:`user_route`, :func:`job_route` and :func:`admin_route` give
the usual kinds their auth, tag and error replies), one handler in the service that serves it
(docs/architecture.md).
``tests/test_routes.py`` compares the table with the bound routers, the gateway's forwarding and
the document; ``tests/test_architecture.py`` checks that no module elsewhere declares a path.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from montage_contracts import api
from montage_contracts.pipeline import JobStatus

JSON = "application/json"
SSE = "text/event-stream"
HTML = "text/html"
MULTIPART = "multipart/form-data"


class Auth(enum.StrEnum):
    """Who may call a route."""

    PUBLIC = "public"  # anyone (still counted by the gateway's request guard unless `guarded=False`)
    USER = "user"  # a verified bearer token; the gateway passes its user id on
    ADMIN = "admin"  # a user whose token carries the admin role (montage_gateway.admin)
    INTERNAL = "internal"  # service to service only (internal secret): never forwarded nor documented


class Service(enum.StrEnum):
    """The service whose handler answers a route (the gateway forwards the others' public routes)."""

    GATEWAY = "gateway"
    ORCHESTRATOR = "orchestrator"
    RAGNAROK = "ragnarok-proxy"


class Param(msgspec.Struct, frozen=True):
    """A path, query or header parameter; ``type`` is an annotated Python type (its JSON Schema)."""

    name: str
    where: Literal["path", "query", "header"]
    type: Any
    required: bool = False
    description: str = ""


class Reply(msgspec.Struct, frozen=True):
    """One status a route may answer: its body type (a tuple: any of them), media type, headers."""

    description: str
    type: Any = None
    media: str = JSON
    headers: tuple[str, ...] = ()


class Body(msgspec.Struct, frozen=True):
    type: Any
    media: str = JSON
    required: bool = True
    encoding: dict[str, str] = {}  # a multipart part's name → its media types (OpenAPI ``encoding.contentType``)


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """One route. ``path`` is in aiohttp's syntax (``{name}`` or ``{name:regex}``)."""

    method: Literal["GET", "POST", "DELETE"]
    path: str
    operation_id: str
    service: Service
    auth: Auth
    summary: str
    tag: str
    responses: dict[int, Reply]
    params: tuple[Param, ...] = ()
    body: Body | None = None
    description: str = ""
    # The handler authenticates the caller itself, also accepting this credential where a browser
    # cannot send `Authorization` (EventSource: a ticket; a page navigation: a cookie).
    own_auth: Literal["ticket", "cookie"] | None = None
    # Counted by the gateway's per-IP request guard (load balancers poll the health route freely).
    guarded: bool = True
    # Served only when ENVIRONMENT=development (404 otherwise, and absent from that document).
    development: bool = False

    @property
    def template(self) -> str:
        """The path without regexes: aiohttp's ``canonical`` form, the document's path."""
        return _REGEX.sub(r"{\1}", self.path)

    def url(self, **values: str) -> str:
        """The path with its parameters filled in (values are not escaped: ids and keys only)."""
        return self.template.format(**values)


_REGEX = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^}]*\}")

# --- parameter types ------------------------------------------------------------------------
JOB_ID = Param("job_id", "path", api.JobId, required=True)
NEXUS_JOB_ID = Param("job_id", "path", Annotated[api.PathSegment, Meta(examples=["job_0f8e…"])], required=True)
ASSET_PATH = Param("path", "path", api.PathSegment, required=True)
Limit = Annotated[int, Meta(ge=1, le=50, extra_json_schema={"default": 10})]
Offset = Annotated[int, Meta(ge=0, le=1_000_000, extra_json_schema={"default": 0})]
ResumeId = Annotated[
    str,
    Meta(
        pattern=api.ENTRY_ID_PATTERN,
        description="Resume after this event id (`<ms>-<seq>`, each part at most 2^64-1); 400 for any other value",
        examples=["1700000000000-0"],
    ),
]
FileKey = Annotated[
    api.PathSegment,
    Meta(description="The storage key `<bucket>/<path>`, its slashes unencoded (as signed URLs have it)"),
]

# --- replies --------------------------------------------------------------------------------
ERROR_TEXT = {
    400: "Invalid request (code `VALIDATION_ERROR`), including a malformed path",
    401: "Missing or invalid credentials (`UNAUTHORIZED`)",
    402: "The estimated cost is over the per-job cap (`BUDGET_EXCEEDED`)",
    403: "Not the caller's (`FORBIDDEN`)",
    404: "Not found (`NOT_FOUND`)",
    408: "The request body arrived too slowly",
    410: "The video expired or was deleted (`GONE`)",
    413: (
        "Request body too large (`VALIDATION_ERROR`), whatever its size: an upload's audio file over"
        " `MAX_UPLOAD_BYTES` (10 MB), found while it streams, or any body over the gateway's `MAX_BODY_BYTES`,"
        " by its `Content-Length` or while it streams"
    ),
    429: "Rate limited (`RATE_LIMIT_EXCEEDED`): the request guard, or the job-creation limit",
    502: "RAGNAROK answered something unexpected (`UPSTREAM_ERROR`)",
    503: "A dependency is unavailable, or too many open streams (`SERVICE_UNAVAILABLE`, `TOO_MANY_CONNECTIONS`)",
    504: "An internal or external service did not answer in time (`TIMEOUT`)",
}


def errors(*codes: int, body: Any = api.Error, **per_code: Any) -> dict[int, Reply]:
    """Error replies; ``per_code`` (``e429=...``) overrides the body type of one status."""
    out: dict[int, Reply] = {}
    for code in codes:
        kind = per_code.get(f"e{code}", api.RateLimited if code == 429 else body)
        headers = ("Retry-After",) if code in (429, 503) else ()
        out[code] = Reply(ERROR_TEXT[code], kind, headers=headers)
    return out


# Authenticated routes: the bearer token (401), the request guard (429), an unreachable or slow
# internal service (503, 504).
AUTHED = (401, 429, 503, 504)
NEXUS_429 = ERROR_TEXT[429] + ", or RAGNAROK's daily limit (`Retry-After` when RAGNAROK sent one)"
NEXUS_ERRORS = {
    **errors(400, 413, 502, *AUTHED, e400=api.NexusError, e502=api.NexusError),
    429: Reply(NEXUS_429, (api.RateLimited, api.NexusError), headers=("Retry-After-Optional",)),
}
ADMIN_TEXT = " (admins only)"
ADMIN_403 = Reply("Not an admin (`FORBIDDEN`)", api.Error)
CONFLICT = Reply("The action does not apply to the target's current state (`CONFLICT`)", api.Error)
STREAM = Param("stream", "path", api.AdminStreamName, required=True)
ENTRY = Param("entry_id", "path", api.EntryId, required=True)
ENTRY_PATH = "{entry_id:[0-9]+-[0-9]+}"


def user_route(
    *,
    method: Literal["GET", "POST", "DELETE"],
    path: str,
    operation_id: str,
    summary: str,
    tag: str,
    ok: dict[int, Reply],
    codes: tuple[int, ...] = (),
    service: Service = Service.ORCHESTRATOR,
    params: tuple[Param, ...] = (),
    body: Body | None = None,
    description: str = "",
) -> Route:
    """A signed-in user's route: it answers ``ok``, the errors ``codes`` and those of every
    authenticated route (:data:`AUTHED`)."""
    return Route(
        method=method,
        path=path,
        operation_id=operation_id,
        service=service,
        auth=Auth.USER,
        summary=summary,
        description=description,
        tag=tag,
        responses={**ok, **errors(*codes, *AUTHED)},
        params=params,
        body=body,
    )


def job_route(
    *,
    method: Literal["GET", "POST", "DELETE"],
    subpath: str,
    operation_id: str,
    summary: str,
    ok: dict[int, Reply],
    codes: tuple[int, ...],
    service: Service = Service.ORCHESTRATOR,
    description: str = "",
) -> Route:
    """A :func:`user_route` of one of the caller's jobs: ``/api/v1/jobs/{job_id}`` + ``subpath``,
    tagged ``jobs``."""
    return user_route(
        method=method,
        path="/api/v1/jobs/{job_id}" + subpath,
        operation_id=operation_id,
        summary=summary,
        tag="jobs",
        ok=ok,
        codes=codes,
        service=service,
        params=(JOB_ID,),
        description=description,
    )


def admin_route(
    *,
    method: Literal["GET", "POST", "DELETE"],
    path: str,
    operation_id: str,
    summary: str,
    ok: Reply,
    codes: tuple[int, ...] = (),
    service: Service = Service.ORCHESTRATOR,
    params: tuple[Param, ...] = (),
    also: dict[int, Reply] | None = None,
) -> Route:
    """A route of the operator console's API (tagged ``admin``, `` (admins only)`` after its summary):
    200 with ``ok``, 403 for any other user, ``also``, the errors ``codes`` and those of every
    authenticated route (:data:`AUTHED`)."""
    return Route(
        method=method,
        path=path,
        operation_id=operation_id,
        service=service,
        auth=Auth.ADMIN,
        summary=summary + ADMIN_TEXT,
        tag="admin",
        responses={200: ok, 403: ADMIN_403, **(also or {}), **errors(*codes, *AUTHED)},
        params=params,
    )


SSE_DESCRIPTION = """\
Server-Sent Events of one job; the protocol in full is `docs/sse.md`. Authenticate with
`Authorization: Bearer`, or (browsers, whose `EventSource` cannot send headers) with `?ticket=`
from `POST /api/v1/jobs/{job_id}/stream-ticket`: valid for that user and job, for any number of
connections, until it expires (20 minutes), so `EventSource` reconnects by itself. Only the
job's owner may open it.

Order on the wire:

1. `event: state` whose `id:` is the resume point: `Last-Event-ID` (header) or `last_event_id`
   (query) when sent, else the newest logged event (`0-0` for an empty log). The state reflects
   every event up to that id; older events are not sent again (`Last-Event-ID: 0-0` replays the
   whole log).
2. Every logged event after the resume point.
3. Live events as they happen, each with its `id:`; `event: heartbeat` (no `id:`) every 30 s.

Logged events: `stage_update`, `progress`, `message`, `cost_update`, `preview`, and the final `completed` or
`error`. The stream closes 30 s after a final event; resuming after the final event answers 204
(an `EventSource` then stops reconnecting). A reconnecting client that sends the last `id:` it
saw gets every event exactly once, in order. An `EventSource` cannot read the status of a
refused connection (401, 403, 404, 429, 503): it fires `error` with `readyState` CLOSED; ask
`POST …/stream-ticket` for the reason and a new ticket. Each message's `event:`, `id:` and
`data:` are described by the `SseEvent` schema: a union tagged by `event`; each member's `data`
schema is what its `data:` line holds, as one line of JSON text.
"""

USER_SSE_DESCRIPTION = """\
Every event of every job of the caller on one connection: the job stream's messages, each with
the job's `job_id` first in its `data`, in one log per user (kept 24 hours, at most 10 000 events),
so `Last-Event-ID` resumes it across reconnects and gateway restarts. Browsers use
`?ticket=` from `POST /api/v1/events/ticket`.

1. `event: state` whose `data` lists the caller's queued and processing jobs now; its `id:` is the
   resume point (the `Last-Event-ID` sent, else the newest event of the caller's log, `0-0` when
   empty; `Last-Event-ID: 0-0` replays the whole log).
2. Every logged event after the resume point, in order (per job, the job stream's order).
3. Live events as they happen; `event: heartbeat` (no `id:`) every 30 s. The stream never ends
   by itself: a job's `completed` or `error` ends that job, not the stream.

Each message is described by the `UserSseEvent` schema (a union tagged by `event`). The connection
takes one of the caller's stream slots (30 per user, shared with the job streams).
"""

# --- the table ------------------------------------------------------------------------------
ROUTES: tuple[Route, ...] = (
    # ops and the document
    Route(
        method="GET",
        path="/api/v1/health",
        operation_id="getHealth",
        service=Service.GATEWAY,
        auth=Auth.PUBLIC,
        guarded=False,
        summary="Health of the system (no auth)",
        tag="ops",
        responses={200: Reply("Healthy", api.Healthy), 503: Reply("Unhealthy", api.Unhealthy), **errors(429)},
    ),
    Route(
        method="GET",
        path="/internal/health",
        operation_id="getInternalHealth",
        service=Service.ORCHESTRATOR,
        auth=Auth.INTERNAL,
        summary="The orchestrator's health: database, Redis, queues, workers (the gateway's health asks it)",
        tag="internal",
        responses={200: Reply("Healthy", api.InternalHealth), 503: Reply("Unhealthy", api.InternalHealth)},
    ),
    Route(
        method="GET",
        path="/api/v1/openapi.json",
        operation_id="getOpenApi",
        service=Service.GATEWAY,
        auth=Auth.PUBLIC,
        summary="This document",
        tag="ops",
        responses={200: Reply("OpenAPI 3.1", dict[str, Any]), **errors(429)},
    ),
    Route(
        method="GET",
        path="/api/v1/docs",
        operation_id="getDocs",
        service=Service.GATEWAY,
        auth=Auth.PUBLIC,
        summary="Human-readable API docs",
        tag="ops",
        responses={200: Reply("HTML", str, media=HTML), **errors(429)},
    ),
    # jobs
    Route(
        method="POST",
        path="/api/v1/upload-audio",
        operation_id="uploadAudio",
        service=Service.ORCHESTRATOR,
        auth=Auth.USER,
        summary="Upload a song and a prompt; creates a job (5 per user per hour)",
        tag="jobs",
        responses={
            201: Reply(
                "Job created (or, for a repeated `Idempotency-Key`, its first answer)",
                api.JobCreated,
                headers=("Idempotent-Replayed", "RateLimit-Policy", "RateLimit"),
            ),
            409: Reply(
                "A request with this `Idempotency-Key` is still being processed, or created nothing"
                " (`IDEMPOTENCY_KEY_IN_USE`, retryable)",
                api.Error,
                headers=("Retry-After",),
            ),
            422: Reply(
                "This `Idempotency-Key` was used for another song or prompt (`IDEMPOTENCY_KEY_REUSED`)", api.Error
            ),
            **errors(400, 402, 408, 413, *AUTHED),
            429: Reply(ERROR_TEXT[429], api.RateLimited, headers=("Retry-After", "RateLimit-Policy", "RateLimit")),
            503: Reply(
                "`SERVICE_UNAVAILABLE`: Montage is busy (a `Busy` body, with `estimated_wait`): a job"
                " uploaded now would wait longer than `ADMISSION_MAX_WAIT_SECONDS` to start; nothing was"
                " stored and the job-creation slot was given back: retry after `Retry-After` seconds. Or a"
                " dependency is unavailable (an `Error` body)",
                (api.Busy, api.Error),
                headers=("Retry-After",),
            ),
        },
        params=(Param("Idempotency-Key", "header", api.IdempotencyKey),),
        body=Body(
            api.UploadForm,
            media=MULTIPART,
            encoding={"audio_file": "audio/mpeg, audio/wav, audio/flac", "user_prompt": "text/plain"},
        ),
    ),
    user_route(
        method="GET",
        path="/api/v1/jobs",
        operation_id="listJobs",
        summary="The caller's jobs, newest first",
        tag="jobs",
        ok={200: Reply("Jobs", api.JobList)},
        codes=(400,),
        params=(
            Param("status", "query", JobStatus),
            Param("limit", "query", Limit),
            Param("offset", "query", Offset),
        ),
    ),
    job_route(
        method="GET",
        subpath="",
        operation_id="getJob",
        summary="One job's status",
        ok={200: Reply("The job", api.Job)},
        codes=(400, 403, 404),
    ),
    job_route(
        method="POST",
        subpath="/cancel",
        operation_id="cancelJob",
        summary="Cancel a queued or processing job (400 when it is already final)",
        ok={200: Reply("Cancelled", api.Cancelled)},
        codes=(400, 403, 404),
    ),
    job_route(
        method="DELETE",
        subpath="",
        operation_id="deleteJob",
        summary="Delete a job: cancels it if running, deletes its song, stills, clips and video, its rows and events",
        ok={204: Reply("Deleted (or deleted before)")},
        codes=(400, 404),
        description=(
            "The owner's delete (a right to erasure): a queued or processing job is cancelled first, then"
            " every stored file of the job and its records are deleted; only what billing must keep stays"
            " (each provider charge's amount and time, the job id and its owner; docs/frontend.md). Afterwards"
            " the job is 404 on every route and its signed URLs stop working. Idempotent: deleting it again"
            " answers 204 too; a job that is not the caller's is 404. 503 (retryable) when storage is"
            " unavailable: nothing was deleted, ask again."
        ),
    ),
    job_route(
        method="POST",
        subpath="/retry",
        operation_id="retryJob",
        summary="Retry a failed or cancelled job: a new job that reuses every finished stage (takes a job slot)",
        ok={201: Reply("The new job", api.JobRetried)},
        codes=(400, 403, 404, 410),
        description=(
            "Creates a new job (`retry_of` names the original, whose `retried_by` then names the new one)"
            " that reuses every stage the original finished, with its stored output and files, and runs"
            " from the first stage it did not finish; what the reused stages cost is not charged again."
            " Watch the new `job_id` like an upload's. Counts against the job-creation limit like an"
            " upload (the slot is given back when the retry is refused). 400 when the job is not failed"
            " (as the cancel of a final job) or was retried already (`retried_by` in the body); 410 when"
            " its song has expired; 503 with Retry-After at the door, as an upload, when the new job"
            " would wait too long to start."
        ),
    ),
    user_route(
        method="GET",
        path="/api/v1/usage",
        operation_id="getUsage",
        service=Service.GATEWAY,
        summary="The caller's usage: jobs in the rate-limit window, when a slot frees, active jobs, this month's spend",
        description=(
            "The job-creation window is the one the upload's `RateLimit-Policy` / `RateLimit` headers and"
            " its 429 describe (`jobs_used` of `jobs_limit` per `window_seconds`; `next_slot_at` when the"
            " oldest counted job leaves it). Reading it takes no slot."
        ),
        tag="jobs",
        ok={200: Reply("Usage", api.Usage)},
    ),
    user_route(
        method="GET",
        path="/api/v1/webhook",
        operation_id="getWebhookDefault",
        summary="The caller's default webhook URL (uploads without `webhook_url` use it)",
        tag="webhooks",
        ok={200: Reply("The default", api.WebhookDefault)},
    ),
    user_route(
        method="POST",
        path="/api/v1/webhook",
        operation_id="setWebhookDefault",
        summary="Set the caller's default webhook URL (the same rules as the upload's `webhook_url`; 400 if refused)",
        description=(
            "Every later upload of the caller without a `webhook_url` field reports to this URL; jobs already"
            " created keep theirs. Checked like the upload's field (https outside development, public addresses"
            " only) now and before every delivery."
        ),
        tag="webhooks",
        ok={200: Reply("The default", api.WebhookDefault)},
        codes=(400,),
        body=Body(api.WebhookDefaultRequest),
    ),
    user_route(
        method="DELETE",
        path="/api/v1/webhook",
        operation_id="deleteWebhookDefault",
        summary="Remove the caller's default webhook URL (204, also when there was none)",
        tag="webhooks",
        ok={204: Reply("Removed")},
    ),
    Route(
        method="GET",
        path="/internal/usage",
        operation_id="getInternalUsage",
        service=Service.ORCHESTRATOR,
        auth=Auth.INTERNAL,
        summary="The user's active jobs and this month's spend (the gateway's `/api/v1/usage` asks it)",
        tag="internal",
        responses={200: Reply("Usage held in Postgres", api.InternalUsage)},
    ),
    job_route(
        method="GET",
        subpath="/download",
        operation_id="getDownload",
        summary="A signed URL of the finished video (valid 1 hour); 404 until completed",
        ok={200: Reply("Download link", api.Download)},
        codes=(400, 403, 404, 410),
    ),
    job_route(
        method="GET",
        subpath="/assets",
        operation_id="getJobAssets",
        summary="The job's previews (reference stills, clips) as stored, then its video and poster, as signed URLs",
        ok={200: Reply("The job's assets", api.JobAssets)},
        codes=(400, 403, 404),
        description=(
            "Each still and clip is listed as soon as it is stored (the same ones the stream's `preview`"
            " events announce), with its index and when it was stored; a completed job adds its final"
            " `video` and its `poster` (a frame of the video). URLs are signed for `expires_in` seconds:"
            " ask again for fresh ones. Empty once the job's files expired; a cancelled job's previews"
            " are deleted with its other intermediates."
        ),
    ),
    job_route(
        method="POST",
        subpath="/stream-ticket",
        operation_id="createStreamTicket",
        summary="A ticket (20 minutes, reusable for this job) to open the job's event stream from a browser",
        ok={201: Reply("Ticket", api.StreamTicket)},
        codes=(400, 403, 404),
        service=Service.GATEWAY,
    ),
    Route(
        method="GET",
        path="/api/v1/jobs/{job_id}/stream",
        operation_id="streamJobEvents",
        service=Service.GATEWAY,
        auth=Auth.USER,
        own_auth="ticket",
        summary="Server-Sent Events of one job",
        tag="jobs",
        responses={
            200: Reply("Event stream (each message: `SseEvent`)", api.SseEvent, media=SSE),
            204: Reply("Resumed after the job's final event: nothing more will come (stops `EventSource`)"),
            **errors(400, 403, 404, *AUTHED),
        },
        params=(
            JOB_ID,
            Param("Last-Event-ID", "header", ResumeId),
            Param("last_event_id", "query", ResumeId, description="Same as the `Last-Event-ID` header"),
        ),
        description=SSE_DESCRIPTION,
    ),
    user_route(
        method="POST",
        path="/api/v1/events/ticket",
        operation_id="createEventsTicket",
        service=Service.GATEWAY,
        summary="A ticket (20 minutes, reusable) to open the caller's event stream (`GET /api/v1/events`) from a browser",
        tag="jobs",
        ok={201: Reply("Ticket", api.StreamTicket)},
    ),
    Route(
        method="GET",
        path="/api/v1/events",
        operation_id="streamUserEvents",
        service=Service.GATEWAY,
        auth=Auth.USER,
        own_auth="ticket",
        summary="Server-Sent Events of all the caller's jobs on one connection, each with its `job_id`",
        tag="jobs",
        responses={
            200: Reply("Event stream (each message: `UserSseEvent`)", api.UserSseEvent, media=SSE),
            **errors(400, *AUTHED),
        },
        params=(
            Param("Last-Event-ID", "header", ResumeId),
            Param("last_event_id", "query", ResumeId, description="Same as the `Last-Event-ID` header"),
        ),
        description=USER_SSE_DESCRIPTION,
    ),
    # the Nexus front door (RAGNAROK)
    Route(
        method="POST",
        path="/api/nexus/ragnarok/direct/submit",
        operation_id="nexusDirectSubmit",
        service=Service.RAGNAROK,
        auth=Auth.USER,
        summary="Submit a RAGNAROK workflow directly",
        tag="nexus",
        responses={
            202: Reply("Accepted by RAGNAROK", api.NexusSubmitted, headers=("X-Trace-ID",)),
            **NEXUS_ERRORS,
        },
        params=(Param("business_name", "query", api.BusinessName, required=True),),
        body=Body(api.DirectSubmitBody, required=False),
    ),
    Route(
        method="POST",
        path="/api/nexus/ragnarok/generate/enriched",
        operation_id="nexusEnrichedSubmit",
        service=Service.RAGNAROK,
        auth=Auth.USER,
        summary="Submit a Trinity-enriched RAGNAROK workflow",
        tag="nexus",
        responses={
            202: Reply("Accepted by RAGNAROK", api.NexusEnrichedSubmitted, headers=("X-Trace-ID",)),
            **NEXUS_ERRORS,
        },
        body=Body(api.EnrichedRequest),
    ),
    Route(
        method="GET",
        path="/api/nexus/ragnarok/jobs/{job_id}",
        operation_id="nexusGetJob",
        service=Service.RAGNAROK,
        auth=Auth.USER,
        summary="Poll a Nexus job",
        tag="nexus",
        responses={
            200: Reply("The job", api.NexusJob, headers=("X-Trace-ID",)),
            **errors(400, 403, 404, *AUTHED, e403=api.NexusError),
        },
        params=(NEXUS_JOB_ID,),
    ),
    # files and development
    Route(
        method="GET",
        path="/files/{key:.*}",
        operation_id="getFile",
        service=Service.GATEWAY,
        auth=Auth.PUBLIC,
        summary="A locally stored object through a signed URL (single `Range` supported)",
        tag="files",
        responses={200: Reply("The file"), 206: Reply("A range of the file"), **errors(400, 403, 404, 429)},
        params=(
            Param("key", "path", FileKey, required=True),
            Param("expires", "query", Annotated[int, Meta(ge=0, description="Unix time")], required=True),
            Param(
                "sig",
                "query",
                Annotated[str, Meta(pattern="^[0-9a-f]{16,128}$", description="HMAC of key and expiry (hex)")],
                required=True,
            ),
        ),
    ),
    Route(
        method="POST",
        path="/api/v1/dev/token",
        operation_id="createDevToken",
        service=Service.GATEWAY,
        auth=Auth.PUBLIC,
        development=True,
        summary="Development only: a HS256 token for a user id",
        tag="dev",
        responses={200: Reply("Token", api.DevToken), **errors(400, 429)},
        body=Body(api.DevTokenRequest),
    ),
    Route(
        method="GET",
        path="/demo",
        operation_id="getDemoPage",
        service=Service.GATEWAY,
        auth=Auth.PUBLIC,
        development=True,
        summary="Development only: the demo page",
        tag="dev",
        responses={200: Reply("HTML", str, media=HTML), **errors(404, 429)},
    ),
    Route(
        method="GET",
        path="/demo/{path:.+}",
        operation_id="getDemoAsset",
        service=Service.GATEWAY,
        auth=Auth.PUBLIC,
        development=True,
        summary="Development only: the demo page's assets",
        tag="dev",
        responses={200: Reply("The asset"), **errors(400, 404, 429)},
        params=(ASSET_PATH,),
    ),
    # the operator console (admins only: 403 for every other user; docs/admin.md)
    Route(
        method="GET",
        path="/admin/queues",
        operation_id="getAdminConsole",
        service=Service.GATEWAY,
        auth=Auth.ADMIN,
        own_auth="cookie",
        summary="The operator console (HTML; the token from `Authorization` or the `montage_admin` cookie)",
        tag="admin",
        responses={200: Reply("HTML", str, media=HTML), 403: ADMIN_403, **errors(*AUTHED)},
    ),
    Route(
        method="GET",
        path="/admin/assets/{path:.+}",
        operation_id="getAdminAsset",
        service=Service.GATEWAY,
        auth=Auth.PUBLIC,
        summary="The console's scripts and styles (no data)",
        tag="admin",
        responses={200: Reply("The asset"), **errors(400, 404, 429)},
        params=(ASSET_PATH,),
    ),
    admin_route(
        method="GET",
        path="/api/v1/admin/me",
        operation_id="getAdminMe",
        summary="Who the console is signed in as",
        ok=Reply("The admin", api.AdminMe),
        service=Service.GATEWAY,
    ),
    admin_route(
        method="GET",
        path="/api/v1/admin/queues",
        operation_id="getAdminQueues",
        summary="Every stage's stream: waiting, in flight, delayed, dead letters, consumers, throughput, p95",
        ok=Reply("The queues", api.AdminQueues),
        codes=(400,),
        params=(Param("window", "query", Annotated[int, Meta(ge=60, le=3600, description="Seconds (default 300)")]),),
    ),
    admin_route(
        method="GET",
        path="/api/v1/admin/dead-letters",
        operation_id="listAdminDeadLetters",
        summary="Dead letters, newest first, with error, attempts and history",
        ok=Reply("Dead letters", api.AdminDeadLetters),
        codes=(400, 404),
        params=(
            Param("stream", "query", api.AdminStreamName),
            Param("limit", "query", Annotated[int, Meta(ge=1, le=500)]),
            Param("before", "query", api.EntryId),
        ),
    ),
    admin_route(
        method="POST",
        path="/api/v1/admin/dead-letters/{stream}/retry-all",
        operation_id="retryAllAdminDeadLetters",
        summary="Retry every dead letter of a stream, oldest first, each on its own",
        ok=Reply("Each entry's outcome", api.AdminRetryAll),
        codes=(400, 404),
        params=(STREAM, Param("limit", "query", Annotated[int, Meta(ge=1, le=200)])),
    ),
    admin_route(
        method="POST",
        path=f"/api/v1/admin/dead-letters/{{stream}}/{ENTRY_PATH}/retry",
        operation_id="retryAdminDeadLetter",
        summary="Retry one dead letter: re-dispatch its stage through the job's state machine",
        ok=Reply("Retried", api.AdminRetried),
        codes=(400, 404),
        params=(STREAM, ENTRY),
        also={409: CONFLICT},
    ),
    admin_route(
        method="DELETE",
        path=f"/api/v1/admin/dead-letters/{{stream}}/{ENTRY_PATH}",
        operation_id="deleteAdminDeadLetter",
        summary="Delete one dead letter",
        ok=Reply("Deleted", api.AdminDeleted),
        codes=(400, 404),
        params=(STREAM, ENTRY),
    ),
    admin_route(
        method="GET",
        path="/api/v1/admin/jobs",
        operation_id="searchAdminJobs",
        summary="Jobs of every user, newest first; `q` is a job id or a user id",
        ok=Reply("Jobs", api.AdminJobs),
        codes=(400,),
        params=(
            Param("q", "query", api.SearchText),
            Param("status", "query", JobStatus),
            Param("limit", "query", Annotated[int, Meta(ge=1, le=100)]),
            Param("offset", "query", Offset),
        ),
    ),
    admin_route(
        method="GET",
        path="/api/v1/admin/jobs/{job_id}",
        operation_id="getAdminJob",
        summary="A job's stages and timings, events, costs, errors, dead letters, files and admin actions",
        ok=Reply("The job", api.AdminJobDetail),
        codes=(400, 404),
        params=(JOB_ID,),
    ),
    admin_route(
        method="POST",
        path="/api/v1/admin/jobs/{job_id}/cancel",
        operation_id="cancelAdminJob",
        summary="Cancel any user's queued or processing job",
        ok=Reply("Cancelled", api.Cancelled),
        codes=(400, 404),
        params=(JOB_ID,),
        # No longer answered: a finished job is 400 (`VALIDATION_ERROR`), as the owner's cancel
        # answers; still listed so that clients of the released document are not broken.
        also={409: Reply("Not answered any more: a finished job is 400, as for the owner's cancel", api.Error)},
    ),
    admin_route(
        method="GET",
        path="/api/v1/admin/jobs/{job_id}/webhooks",
        operation_id="listAdminJobWebhooks",
        summary="A job's webhook deliveries: state, attempts, last status and error, next attempt",
        ok=Reply("Deliveries", api.AdminWebhookDeliveries),
        codes=(400, 404),
        params=(JOB_ID,),
    ),
    admin_route(
        method="POST",
        path="/api/v1/admin/webhooks/{webhook_id}/resend",
        operation_id="resendAdminWebhook",
        summary="Send a webhook delivery again now, same `webhook-id` (any state; a failed one gets a new retry"
        " window)",
        ok=Reply("Back in line", api.AdminWebhookDelivery),
        codes=(400, 404),
        params=(Param("webhook_id", "path", api.WebhookId, required=True),),
    ),
    admin_route(
        method="DELETE",
        path="/api/v1/admin/jobs/{job_id}",
        operation_id="deleteAdminJob",
        summary="Delete any user's job as its owner's delete does (cancel, files, rows, events; logged)",
        ok=Reply("Deleted", api.AdminJobDeleted),
        codes=(400, 404),
        params=(JOB_ID,),
    ),
    admin_route(
        method="GET",
        path="/api/v1/admin/actions",
        operation_id="listAdminActions",
        summary="The action log: every retry, delete and cancel, who asked and what came of it",
        ok=Reply("Actions", api.AdminActions),
        codes=(400,),
        params=(
            Param("limit", "query", Annotated[int, Meta(ge=1, le=500)]),
            Param("job_id", "query", api.JobId),
        ),
    ),
    admin_route(
        method="GET",
        path="/api/v1/admin/ragnarok/jobs",
        operation_id="listAdminNexusJobs",
        summary="Nexus jobs with their workflow ids, statuses and trace ids",
        ok=Reply("Nexus jobs", api.AdminNexusJobs),
        codes=(400,),
        service=Service.RAGNAROK,
        params=(
            Param("q", "query", Annotated[api.SearchText, Meta(description="job, workflow, trace or user id")]),
            Param("status", "query", JobStatus),
            Param("limit", "query", Annotated[int, Meta(ge=1, le=200)]),
            Param("offset", "query", Offset),
        ),
    ),
)


def _index(routes: tuple[Route, ...]) -> dict[str, Route]:
    """Routes by ``operation_id``; a duplicate id or method and path is a mistake in the table."""
    by_id: dict[str, Route] = {}
    seen: set[tuple[str, str]] = set()
    for route in routes:
        key = (route.method, route.template)
        if route.operation_id in by_id or key in seen:
            raise ValueError(f"duplicate route {route.operation_id} ({route.method} {route.template})")
        by_id[route.operation_id] = route
        seen.add(key)
    return by_id


BY_ID: dict[str, Route] = _index(ROUTES)
_BY_METHOD_PATH: dict[tuple[str, str], Route] = {(r.method, r.template): r for r in ROUTES}


def route(operation_id: str) -> Route:
    """The route with this ``operationId`` (KeyError: no such route)."""
    return BY_ID[operation_id]


def served_by(service: Service) -> tuple[Route, ...]:
    return tuple(r for r in ROUTES if r.service is service)


def public(*, development: bool) -> tuple[Route, ...]:
    """What the gateway serves or forwards, and documents: every non-internal route."""
    return tuple(r for r in ROUTES if r.auth is not Auth.INTERNAL and (development or not r.development))


def find(method: str, template: str) -> Route | None:
    """The route of a request matched to ``template`` (aiohttp's ``canonical``); HEAD is GET's."""
    return _BY_METHOD_PATH.get(("GET" if method == "HEAD" else method, template))
