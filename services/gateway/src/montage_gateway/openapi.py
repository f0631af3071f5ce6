"""The OpenAPI 3.1 document of the public API, generated, and a dependency-free docs page.

Every operation is a route of the table (``montage_contracts.routes``: path, method,
``operationId``, parameters, auth, every status a route can answer with its body type and
headers), every non-internal one; every schema comes from a type: the request and response bodies
are the msgspec Structs of :mod:`montage_contracts.api`, parameters are annotated Python types,
and ``msgspec.json.schema_components`` turns them into JSON Schema. Nothing here is hand-written
but the document's frame (info, security schemes, shared headers).

Kept true by ``tests/test_routes.py`` (the table, the services' routers, the gateway's forwarding
and this document agree), ``tests/gateway/test_openapi.py`` (the document is valid OpenAPI 3.1 and
complete) and ``tests/security/test_fuzz.py`` (schemathesis against the live stack: no 5xx, no
response that contradicts the document).
"""

from __future__ import annotations

import html
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from montage_common.web import json_response
from montage_contracts import api, routes
from montage_contracts.routes import Auth, Route
from msgspec import Meta

REF = "#/components/schemas/{name}"
Security = Literal["bearer", "public", "stream"]

HEADERS: dict[str, tuple[str, Any, bool, str]] = {
    # component name: (header name, type, required, description)
    "X-Request-ID": ("X-Request-ID", str, True, "The request's id (the caller's if valid, else a new UUID)"),
    "Retry-After": ("Retry-After", Annotated[int, Meta(ge=1)], True, "Seconds to wait before retrying"),
    "Retry-After-Optional": ("Retry-After", Annotated[int, Meta(ge=1)], False, "Seconds to wait, when known"),
    "X-Trace-ID": ("X-Trace-ID", str, True, "The Nexus trace id (`nxs_<unix seconds>_<hex>`)"),
    "Idempotent-Replayed": (
        "Idempotent-Replayed",
        Literal["true"],
        False,
        "`true` when this is the first answer to the request's `Idempotency-Key`, sent again",
    ),
    # draft-ietf-httpapi-ratelimit-headers (structured fields); the job-creation limit only.
    "RateLimit-Policy": (
        "RateLimit-Policy",
        str,
        False,
        'The job-creation quota: `"jobs";q=<jobs>;w=<window seconds>`, e.g. `"jobs";q=5;w=3600`',
    ),
    "RateLimit": (
        "RateLimit",
        str,
        False,
        '`"jobs";r=<jobs remaining>;t=<seconds until the oldest counted job frees its slot>`'
        " (absent when the request guard answered)",
    ),
}
SECURITY: dict[Security, list[dict[str, list[str]]]] = {
    "bearer": [{"bearer": []}],
    "public": [],
    "stream": [{"bearer": []}, {"streamTicket": []}],
}


def _security(route: Route) -> Security:
    if route.auth is Auth.PUBLIC:
        return "public"
    return "stream" if route.own_auth == "ticket" else "bearer"


def _types(op: Route) -> list[Any]:
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

    def __init__(self, ops: tuple[Route, ...]) -> None:
        types: list[Any] = [api.SseEvent, api.UserSseEvent, api.WebhookEvent]
        types.extend(t for op in ops for t in _types(op))
        types.extend(t for _, t, _, _ in HEADERS.values())
        unique = list(dict.fromkeys(types))
        schemas, self.components = msgspec.json.schema_components(unique, ref_template=REF)
        self._by_type = dict(zip(unique, schemas, strict=True))
        self.components["SseEvent"] = self._by_type[api.SseEvent]
        self.components["UserSseEvent"] = self._by_type[api.UserSseEvent]
        self.components.update(api.EXTRA_COMPONENTS)
        for name, keywords in api.SCHEMA_EXTRAS.items():
            self.components[name] = {**self.components[name], **keywords}

    def of(self, t: Any) -> dict[str, Any]:
        if isinstance(t, tuple):
            return {"anyOf": [self._by_type[x] for x in t]}
        schema: dict[str, Any] = self._by_type[t]
        return schema


def _operation(op: Route, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    security = _security(op)
    if security != "bearer":
        out["security"] = SECURITY[security]
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
        media: dict[str, Any] = {"schema": schemas.of(op.body.type)}
        if op.body.encoding:
            media["encoding"] = {part: {"contentType": types} for part, types in op.body.encoding.items()}
        out["requestBody"] = {"required": op.body.required, "content": {op.body.media: media}}
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
    return out


def document(*, development: bool, server_url: str = "/") -> dict[str, Any]:
    ops = routes.public(development=development)
    schemas = _Schemas(ops)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.template, {})[op.method.lower()] = _operation(op, schemas)
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
        "webhooks": _webhooks(schemas),
    }


WEBHOOK_DESCRIPTION = """\
What Montage POSTs to the `webhook_url` given at upload when the job becomes final, signed by the
Standard Webhooks specification with the deployment's `WEBHOOK_SECRET` (verify with any
`standardwebhooks` library; docs/frontend.md). Answer 2xx quickly: any other answer, a redirect
(never followed) or no answer within 10 s is retried with exponential backoff for at least 24 h,
with the same `webhook-id` (deduplicate on it)."""


def _webhooks(schemas: _Schemas) -> dict[str, Any]:
    """The OpenAPI 3.1 ``webhooks`` of the document: the job's final event (``api.WebhookEvent``)."""
    header = {"required": True, "schema": {"type": "string"}}
    params = [
        {"name": "webhook-id", "in": "header", **header, "description": "The event's id, the same on every attempt"},
        {"name": "webhook-timestamp", "in": "header", **header, "description": "Unix seconds of this attempt"},
        {
            "name": "webhook-signature",
            "in": "header",
            **header,
            "description": '`v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`',
        },
    ]
    return {
        "jobFinished": {
            "post": {
                "operationId": "jobFinishedWebhook",
                "summary": "A job became final: `job.completed`, `job.failed` or `job.cancelled`",
                "description": WEBHOOK_DESCRIPTION,
                "tags": ["webhooks"],
                "security": [],
                "parameters": params,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schemas.of(api.WebhookEvent)}},
                },
                "responses": {"2XX": {"description": "Received (anything else is retried)"}},
            }
        }
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
        data_ref = components[cls.__name__]["properties"]["data"]["$ref"].rsplit("/", 1)[-1]
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
