"""The OpenAPI 3.1 document of the public API, generated, and a dependency-free docs page.

Every schema in the document comes from a type: the request and response bodies are the msgspec
Structs of :mod:`montage_contracts.api`, parameters are annotated Python types, and
``msgspec.json.schema_components`` turns them into JSON Schema. This module only holds route
metadata: path, method, ``operationId``, parameters, security, and every status a route can
answer with its body type and headers.

Kept true by ``tests/gateway/test_openapi.py`` (every public route of the app is documented and
every documented operation is served; the document is valid OpenAPI 3.1) and by
``tests/security/test_fuzz.py`` (schemathesis against the live stack: no 5xx, no response that
contradicts the document).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from montage_common.web import json_response
from montage_contracts import api
from montage_contracts.pipeline import JobStatus
from msgspec import Meta

JSON = "application/json"
SSE = "text/event-stream"
HTML = "text/html"
REF = "#/components/schemas/{name}"
Security = Literal["bearer", "public", "stream"]


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    type: Any
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """One documented status: its body type (or types: any of them), media type and extra headers."""

    description: str
    type: Any = None
    media: str = JSON
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Body:
    type: Any
    media: str = JSON
    required: bool = True


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    responses: dict[int, Reply]
    security: Security = "bearer"
    params: tuple[Param, ...] = ()
    body: Body | None = None
    description: str = ""
    development: bool = False
    extensions: dict[str, Any] = field(default_factory=dict)


# --- parameter types ------------------------------------------------------------------------
JOB_ID = Param("job_id", "path", api.JobId, required=True)
NEXUS_JOB_ID = Param("job_id", "path", Annotated[api.PathSegment, Meta(examples=["job_0f8e…"])], required=True)
Limit = Annotated[int, Meta(ge=1, le=50, extra_json_schema={"default": 10})]
Offset = Annotated[int, Meta(ge=0, le=1_000_000, extra_json_schema={"default": 0})]
ResumeId = Annotated[
    str,
    Meta(
        description="Resume after this event id (`<ms>-<seq>`); any other value replays from the start",
        examples=["1700000000000-0"],
    ),
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
    413: "Request body too large",
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


NEXUS_429 = ERROR_TEXT[429] + ", or RAGNAROK's daily limit (`Retry-After` when RAGNAROK sent one)"

# Authenticated routes: the bearer token (401), the request guard (429), an unreachable or slow
# internal service (503, 504).
AUTHED = (401, 429, 503, 504)

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

Logged events: `stage_update`, `progress`, `message`, `cost_update`, and the final `completed` or
`error`. The stream closes 30 s after a final event; resuming after the final event answers 204
(an `EventSource` then stops reconnecting). A reconnecting client that sends the last `id:` it
saw gets every event exactly once, in order. An `EventSource` cannot read the status of a
refused connection (401, 403, 404, 429, 503): it fires `error` with `readyState` CLOSED; ask
`POST …/stream-ticket` for the reason and a new ticket. Each message's `event:` and `data:`
(JSON) are described by the `SseEvent` schema: a union tagged by `event`; `data` is JSON text
whose schema is the `contentSchema` of each member.
"""

# --- the operator console (admins only: 403 for every other user; montage_gateway.admin) --------
ADMIN_TEXT = " (admins only)"
ADMIN_403 = Reply("Not an admin (`FORBIDDEN`)", api.Error)
CONFLICT = Reply("The action does not apply to the target's current state (`CONFLICT`)", api.Error)
STREAM = Param("stream", "path", api.AdminStreamName, required=True)
ENTRY = Param("entry_id", "path", api.EntryId, required=True)
ADMIN_OPERATIONS: tuple[Op, ...] = (
    Op(
        "get",
        "/admin/queues",
        "getAdminConsole",
        "The operator console (HTML; the token from `Authorization` or the `montage_admin` cookie)",
        "admin",
        {200: Reply("HTML", str, media=HTML), 403: ADMIN_403, **errors(*AUTHED)},
    ),
    Op(
        "get",
        "/admin/assets/{path}",
        "getAdminAsset",
        "The console's scripts and styles (no data)",
        "admin",
        {200: Reply("The asset"), **errors(400, 404, 429)},
        security="public",
        params=(Param("path", "path", api.PathSegment, required=True),),
    ),
    Op(
        "get",
        "/api/v1/admin/me",
        "getAdminMe",
        "Who the console is signed in as" + ADMIN_TEXT,
        "admin",
        {200: Reply("The admin", api.AdminMe), 403: ADMIN_403, **errors(*AUTHED)},
    ),
    Op(
        "get",
        "/api/v1/admin/queues",
        "getAdminQueues",
        "Every stage's stream: waiting, in flight, delayed, dead letters, consumers, throughput, p95" + ADMIN_TEXT,
        "admin",
        {200: Reply("The queues", api.AdminQueues), 403: ADMIN_403, **errors(400, *AUTHED)},
        params=(Param("window", "query", Annotated[int, Meta(ge=60, le=3600, description="Seconds (default 300)")]),),
    ),
    Op(
        "get",
        "/api/v1/admin/dead-letters",
        "listAdminDeadLetters",
        "Dead letters, newest first, with error, attempts and history" + ADMIN_TEXT,
        "admin",
        {200: Reply("Dead letters", api.AdminDeadLetters), 403: ADMIN_403, **errors(400, 404, *AUTHED)},
        params=(
            Param("stream", "query", api.AdminStreamName),
            Param("limit", "query", Annotated[int, Meta(ge=1, le=500)]),
            Param("before", "query", api.EntryId),
        ),
    ),
    Op(
        "post",
        "/api/v1/admin/dead-letters/{stream}/retry-all",
        "retryAllAdminDeadLetters",
        "Retry every dead letter of a stream, oldest first, each on its own" + ADMIN_TEXT,
        "admin",
        {200: Reply("Each entry's outcome", api.AdminRetryAll), 403: ADMIN_403, **errors(400, 404, *AUTHED)},
        params=(STREAM, Param("limit", "query", Annotated[int, Meta(ge=1, le=200)])),
    ),
    Op(
        "post",
        "/api/v1/admin/dead-letters/{stream}/{entry_id}/retry",
        "retryAdminDeadLetter",
        "Retry one dead letter: re-dispatch its stage through the job's state machine" + ADMIN_TEXT,
        "admin",
        {200: Reply("Retried", api.AdminRetried), 403: ADMIN_403, 409: CONFLICT, **errors(400, 404, *AUTHED)},
        params=(STREAM, ENTRY),
    ),
    Op(
        "delete",
        "/api/v1/admin/dead-letters/{stream}/{entry_id}",
        "deleteAdminDeadLetter",
        "Delete one dead letter" + ADMIN_TEXT,
        "admin",
        {200: Reply("Deleted", api.AdminDeleted), 403: ADMIN_403, **errors(400, 404, *AUTHED)},
        params=(STREAM, ENTRY),
    ),
    Op(
        "get",
        "/api/v1/admin/jobs",
        "searchAdminJobs",
        "Jobs of every user, newest first; `q` is a job id or a user id" + ADMIN_TEXT,
        "admin",
        {200: Reply("Jobs", api.AdminJobs), 403: ADMIN_403, **errors(400, *AUTHED)},
        params=(
            Param("q", "query", Annotated[str, Meta(max_length=200)]),
            Param("status", "query", JobStatus),
            Param("limit", "query", Annotated[int, Meta(ge=1, le=100)]),
            Param("offset", "query", Offset),
        ),
    ),
    Op(
        "get",
        "/api/v1/admin/jobs/{job_id}",
        "getAdminJob",
        "A job's stages and timings, events, costs, errors, dead letters, files and admin actions" + ADMIN_TEXT,
        "admin",
        {200: Reply("The job", api.AdminJobDetail), 403: ADMIN_403, **errors(400, 404, *AUTHED)},
        params=(JOB_ID,),
    ),
    Op(
        "post",
        "/api/v1/admin/jobs/{job_id}/cancel",
        "cancelAdminJob",
        "Cancel any user's queued or processing job" + ADMIN_TEXT,
        "admin",
        {200: Reply("Cancelled", api.Cancelled), 403: ADMIN_403, 409: CONFLICT, **errors(400, 404, *AUTHED)},
        params=(JOB_ID,),
    ),
    Op(
        "get",
        "/api/v1/admin/actions",
        "listAdminActions",
        "The action log: every retry, delete and cancel, who asked and what came of it" + ADMIN_TEXT,
        "admin",
        {200: Reply("Actions", api.AdminActions), 403: ADMIN_403, **errors(400, *AUTHED)},
        params=(
            Param("limit", "query", Annotated[int, Meta(ge=1, le=500)]),
            Param("job_id", "query", api.JobId),
        ),
    ),
    Op(
        "get",
        "/api/v1/admin/ragnarok/jobs",
        "listAdminNexusJobs",
        "Nexus jobs with their workflow ids, statuses and trace ids" + ADMIN_TEXT,
        "admin",
        {200: Reply("Nexus jobs", api.AdminNexusJobs), 403: ADMIN_403, **errors(400, *AUTHED)},
        params=(
            Param("q", "query", Annotated[str, Meta(max_length=200, description="job, workflow, trace or user id")]),
            Param("status", "query", JobStatus),
            Param("limit", "query", Annotated[int, Meta(ge=1, le=200)]),
            Param("offset", "query", Offset),
        ),
    ),
)

OPERATIONS: tuple[Op, ...] = (
    Op(
        "get",
        "/api/v1/health",
        "getHealth",
        "Health of the system (no auth)",
        "ops",
        {200: Reply("Healthy", api.Healthy), 503: Reply("Unhealthy", api.Unhealthy), **errors(429)},
        security="public",
    ),
    Op(
        "post",
        "/api/v1/upload-audio",
        "uploadAudio",
        "Upload a song and a prompt; creates a job (5 per user per hour)",
        "jobs",
        {201: Reply("Job created", api.JobCreated), **errors(400, 402, 408, 413, *AUTHED)},
        body=Body(api.UploadForm, media="multipart/form-data"),
    ),
    Op(
        "get",
        "/api/v1/jobs",
        "listJobs",
        "The caller's jobs, newest first",
        "jobs",
        {200: Reply("Jobs", api.JobList), **errors(400, *AUTHED)},
        params=(
            Param("status", "query", JobStatus),
            Param("limit", "query", Limit),
            Param("offset", "query", Offset),
        ),
    ),
    Op(
        "get",
        "/api/v1/jobs/{job_id}",
        "getJob",
        "One job's status",
        "jobs",
        {200: Reply("The job", api.Job), **errors(400, 403, 404, *AUTHED)},
        params=(JOB_ID,),
    ),
    Op(
        "post",
        "/api/v1/jobs/{job_id}/cancel",
        "cancelJob",
        "Cancel a queued or processing job (400 when it is already final)",
        "jobs",
        {200: Reply("Cancelled", api.Cancelled), **errors(400, 403, 404, *AUTHED)},
        params=(JOB_ID,),
    ),
    Op(
        "get",
        "/api/v1/jobs/{job_id}/download",
        "getDownload",
        "A signed URL of the finished video (valid 1 hour); 404 until completed",
        "jobs",
        {200: Reply("Download link", api.Download), **errors(400, 403, 404, 410, *AUTHED)},
        params=(JOB_ID,),
    ),
    Op(
        "post",
        "/api/v1/jobs/{job_id}/stream-ticket",
        "createStreamTicket",
        "A ticket (20 minutes, reusable for this job) to open the job's event stream from a browser",
        "jobs",
        {201: Reply("Ticket", api.StreamTicket), **errors(400, 403, 404, *AUTHED)},
        params=(JOB_ID,),
    ),
    Op(
        "get",
        "/api/v1/jobs/{job_id}/stream",
        "streamJobEvents",
        "Server-Sent Events of one job",
        "jobs",
        {
            200: Reply("Event stream (each message: `SseEvent`)", api.SseEvent, media=SSE),
            204: Reply("Resumed after the job's final event: nothing more will come (stops `EventSource`)"),
            **errors(400, 403, 404, *AUTHED),
        },
        security="stream",
        params=(
            JOB_ID,
            Param("Last-Event-ID", "header", ResumeId),
            Param("last_event_id", "query", ResumeId, description="Same as the `Last-Event-ID` header"),
        ),
        description=SSE_DESCRIPTION,
    ),
    Op(
        "post",
        "/api/nexus/ragnarok/direct/submit",
        "nexusDirectSubmit",
        "Submit a RAGNAROK workflow directly",
        "nexus",
        {
            202: Reply("Accepted by RAGNAROK", api.NexusSubmitted, headers=("X-Trace-ID",)),
            **errors(400, 413, 502, *AUTHED, e400=api.NexusError, e502=api.NexusError),
            429: Reply(NEXUS_429, (api.RateLimited, api.NexusError), headers=("Retry-After-Optional",)),
        },
        params=(Param("business_name", "query", api.BusinessName, required=True),),
        body=Body(api.DirectSubmitBody, required=False),
    ),
    Op(
        "post",
        "/api/nexus/ragnarok/generate/enriched",
        "nexusEnrichedSubmit",
        "Submit a Trinity-enriched RAGNAROK workflow",
        "nexus",
        {
            202: Reply("Accepted by RAGNAROK", api.NexusEnrichedSubmitted, headers=("X-Trace-ID",)),
            **errors(400, 413, 502, *AUTHED, e400=api.NexusError, e502=api.NexusError),
            429: Reply(NEXUS_429, (api.RateLimited, api.NexusError), headers=("Retry-After-Optional",)),
        },
        body=Body(api.EnrichedRequest),
    ),
    Op(
        "get",
        "/api/nexus/ragnarok/jobs/{job_id}",
        "nexusGetJob",
        "Poll a Nexus job",
        "nexus",
        {
            200: Reply("The job", api.NexusJob, headers=("X-Trace-ID",)),
            **errors(400, 403, 404, *AUTHED, e403=api.NexusError),
        },
        params=(NEXUS_JOB_ID,),
    ),
    Op(
        "get",
        "/api/v1/openapi.json",
        "getOpenApi",
        "This document",
        "ops",
        {200: Reply("OpenAPI 3.1", dict[str, Any]), **errors(429)},
        security="public",
    ),
    Op(
        "get",
        "/api/v1/docs",
        "getDocs",
        "Human-readable API docs",
        "ops",
        {200: Reply("HTML", str, media=HTML), **errors(429)},
        security="public",
    ),
    Op(
        "get",
        "/files/{key}",
        "getFile",
        "A locally stored object through a signed URL (single `Range` supported)",
        "files",
        {
            200: Reply("The file"),
            206: Reply("A range of the file"),
            **errors(400, 403, 404, 429),
        },
        security="public",
        params=(
            Param(
                "key",
                "path",
                Annotated[
                    api.PathSegment,
                    Meta(
                        description="The storage key `<bucket>/<path>`, its slashes unencoded (as signed URLs have it)"
                    ),
                ],
                required=True,
            ),
            Param("expires", "query", Annotated[int, Meta(ge=0, description="Unix time")], required=True),
            Param(
                "sig",
                "query",
                Annotated[str, Meta(pattern="^[0-9a-f]{16,128}$", description="HMAC of key and expiry (hex)")],
                required=True,
            ),
        ),
    ),
    Op(
        "post",
        "/api/v1/dev/token",
        "createDevToken",
        "Development only: a HS256 token for a user id",
        "dev",
        {200: Reply("Token", api.DevToken), **errors(400, 429)},
        security="public",
        body=Body(api.DevTokenRequest),
        development=True,
    ),
    Op(
        "get",
        "/demo",
        "getDemoPage",
        "Development only: the demo page",
        "dev",
        {200: Reply("HTML", str, media=HTML), **errors(404, 429)},
        security="public",
        development=True,
    ),
    Op(
        "get",
        "/demo/{path}",
        "getDemoAsset",
        "Development only: the demo page's assets",
        "dev",
        {200: Reply("The asset"), **errors(400, 404, 429)},
        security="public",
        params=(Param("path", "path", api.PathSegment, required=True),),
        development=True,
    ),
    *ADMIN_OPERATIONS,
)

HEADERS: dict[str, tuple[str, Any, bool, str]] = {
    # component name: (header name, type, required, description)
    "X-Request-ID": ("X-Request-ID", str, True, "The request's id (the caller's if valid, else a new UUID)"),
    "Retry-After": ("Retry-After", Annotated[int, Meta(ge=1)], True, "Seconds to wait before retrying"),
    "Retry-After-Optional": ("Retry-After", Annotated[int, Meta(ge=1)], False, "Seconds to wait, when known"),
    "X-Trace-ID": ("X-Trace-ID", str, True, "The Nexus trace id (`nxs_<unix seconds>_<hex>`)"),
}
SECURITY: dict[Security, list[dict[str, list[str]]]] = {
    "bearer": [{"bearer": []}],
    "public": [],
    "stream": [{"bearer": []}, {"streamTicket": []}],
}


def _types(op: Op) -> list[Any]:
    out: list[Any] = [p.type for p in op.params]
    if op.body is not None:
        out.append(op.body.type)
    for reply in op.responses.values():
        if isinstance(reply.type, tuple):
            out.extend(reply.type)
        elif reply.type is not None:
            out.append(reply.type)
    return out


class _Schemas:
    """One ``schema_components`` call over every type of the document; ``of(t)`` is t's schema."""

    def __init__(self, ops: tuple[Op, ...]) -> None:
        types: list[Any] = [api.SseEvent]
        types.extend(t for op in ops for t in _types(op))
        types.extend(t for _, t, _, _ in HEADERS.values())
        unique = list(dict.fromkeys(types))
        schemas, self.components = msgspec.json.schema_components(unique, ref_template=REF)
        self._by_type = dict(zip(unique, schemas, strict=True))
        self.components["SseEvent"] = self._by_type[api.SseEvent]
        # On the wire an SSE message's `data:` is JSON text: the payload Struct's schema becomes
        # its `contentSchema` (OpenAPI 3.1 reads a text/event-stream `schema` as one message).
        text: dict[str, Any] = msgspec.json.schema(Annotated[str, Meta(extra_json_schema={"contentMediaType": JSON})])
        for cls in api.SSE_EVENTS:
            props = self.components[cls.__name__]["properties"]
            props["data"] = {**text, "contentSchema": props["data"]}

    def of(self, t: Any) -> dict[str, Any]:
        if isinstance(t, tuple):
            return {"anyOf": [self._by_type[x] for x in t]}
        schema: dict[str, Any] = self._by_type[t]
        return schema


def _operation(op: Op, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    if op.security != "bearer":
        out["security"] = SECURITY[op.security]
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required,
                "schema": schemas.of(p.type),
                **({"description": p.description} if p.description else {}),
            }
            for p in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body.required,
            "content": {op.body.media: {"schema": schemas.of(op.body.type)}},
        }
    responses: dict[str, Any] = {}
    for status, reply in sorted(op.responses.items()):
        headers = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
        for name in reply.headers:
            headers[HEADERS[name][0]] = {"$ref": f"#/components/headers/{name}"}
        entry: dict[str, Any] = {"description": reply.description, "headers": headers}
        if reply.type is not None:
            entry["content"] = {reply.media: {"schema": schemas.of(reply.type)}}
        responses[str(status)] = entry
    out["responses"] = responses
    out.update(op.extensions)
    return out


def document(*, development: bool, server_url: str = "/") -> dict[str, Any]:
    ops = tuple(op for op in OPERATIONS if development or not op.development)
    schemas = _Schemas(ops)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
    headers = {
        key: {"description": text, "required": required, "schema": schemas.of(t)}
        for key, (_, t, required, text) in HEADERS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Montage API",
            "version": "1.0.0",
            "description": (
                "Music-video generation (public gateway). Every error has the body `Error` "
                '(`{"error", "code", "retryable", "job_id"}` plus per-error fields); every response carries '
                "`X-Request-ID`; 429 and 503 carry `Retry-After`. Unlisted methods on a documented path answer 405."
            ),
        },
        "servers": [{"url": server_url}],
        "security": SECURITY["bearer"],
        "tags": [{"name": n} for n in dict.fromkeys(op.tag for op in ops)],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "streamTicket": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "ticket",
                    "description": "Only on the event stream: a ticket from `POST …/stream-ticket`",
                },
            },
            "headers": headers,
            "schemas": schemas.components,
        },
        "paths": paths,
    }


def _fields(schema: dict[str, Any]) -> str:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    return ", ".join(f"{name}{'' if name in required else '?'}" for name in props)


def docs_page(doc: dict[str, Any]) -> str:
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            auth = {None: "bearer", "[]": "public"}.get(
                None if "security" not in op else str(op["security"]), "bearer or ticket"
            )
            codes = ", ".join(op.get("responses", {}))
            rows.append(
                f"<tr><td><b>{method.upper()}</b></td><td><code>{html.escape(path)}</code><br>"
                f"<small>{html.escape(op['operationId'])}</small></td>"
                f"<td>{html.escape(op.get('summary', ''))}<br><small>{html.escape(op.get('description', ''))}</small>"
                f"</td><td>{auth}</td><td>{codes}</td></tr>"
            )
    components = doc["components"]["schemas"]
    events = []
    for cls in api.SSE_EVENTS:
        name = api.sse_event_name(cls)
        data_ref = components[cls.__name__]["properties"]["data"]["contentSchema"]["$ref"].rsplit("/", 1)[-1]
        has_id = "id" in components[cls.__name__]["properties"]
        events.append(
            f"<tr><td><code>{name}</code></td><td>{'yes' if has_id else 'no'}</td>"
            f"<td><code>{html.escape(_fields(components[data_ref]))}</code></td>"
            f"<td>{html.escape(components[cls.__name__].get('description', ''))}</td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Montage API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{border-top:1px solid #ddd;padding:.4em;vertical-align:top}</style>"
        "</head><body><h1>Montage API</h1><p>Machine-readable: <a href='/api/v1/openapi.json'>openapi.json</a> "
        "(OpenAPI 3.1). Authenticate with <code>Authorization: Bearer &lt;Supabase JWT&gt;</code>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Auth</th><th>Responses</th></tr>"
        + "".join(rows)
        + "</table><h2>Events of <code>GET /api/v1/jobs/{job_id}/stream</code></h2>"
        "<table><tr><th>event</th><th>id</th><th>data</th><th>when</th></tr>" + "".join(events) + "</table>"
        "</body></html>"
    )


class DocsHandler:
    def __init__(self, *, development: bool) -> None:
        self.doc = document(development=development)
        self.page = docs_page(self.doc)

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(self.doc)

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page, content_type="text/html")
