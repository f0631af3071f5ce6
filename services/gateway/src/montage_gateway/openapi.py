"""The OpenAPI 3.1 document of the public API and a dependency-free docs page.

Kept true by ``tests/gateway/test_openapi.py``: every public route of the app is documented and
every documented path is served (by a gateway route or a forwarding prefix).
"""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web
from montage_common.web import json_response

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Validation error",
        401: "Missing or invalid token",
        403: "Not the caller's job",
        404: "Not found",
        410: "Expired or deleted",
        413: "Body too large",
        429: "Rate limited",
        503: "Service unavailable / too many connections",
        504: "Upstream timeout",
    }
    return {str(c): _json(_ref("RateLimited" if c == 429 else "Error"), text[c]) for c in codes}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
NEXUS_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
AUTHED: list[dict[str, list[str]]] = [{"bearer": []}]


def _schemas() -> dict[str, Any]:
    num = {"type": ["number", "null"]}
    text = {"type": ["string", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error", "code", "retryable"],
            "properties": {
                "error": {"type": "string"},
                "code": {"type": "string"},
                "retryable": {"type": "boolean"},
                "job_id": text,
            },
        },
        "RateLimited": {
            "allOf": [
                _ref("Error"),
                {
                    "type": "object",
                    "properties": {
                        "retry_after": {"type": "integer"},
                        "limit": {"type": "integer"},
                        "window": {"type": "string", "examples": ["1 hour"]},
                    },
                },
            ]
        },
        "JobCreated": {
            "type": "object",
            "properties": {
                "job_id": {"type": "string"},
                "status": {"type": "string"},
                "estimated_cost": {"type": "number"},
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
        "Job": {
            "type": "object",
            "properties": {
                "job_id": {"type": "string"},
                "status": {"type": "string", "enum": ["queued", "processing", "completed", "failed"]},
                "current_stage": text,
                "progress": {"type": "integer"},
                "estimated_remaining": num,
                "total_cost": num,
                "video_url": text,
                "error_message": text,
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
        "JobList": {
            "type": "object",
            "properties": {
                "jobs": {"type": "array", "items": _ref("Job")},
                "total": {"type": "integer"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
            },
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "queue": {
                    "type": "object",
                    "properties": {n: {"type": "integer"} for n in ("size", "active_jobs", "workers")},
                },
                "database": {"type": "string"},
                "redis": {"type": "string"},
                "issues": {"type": "array", "items": {"type": "string"}},
            },
        },
        "StreamTicket": {
            "type": "object",
            "properties": {"ticket": {"type": "string"}, "expires_in": {"type": "integer"}},
        },
        "NexusJob": {"type": "object", "additionalProperties": True},
    }


def _paths() -> dict[str, Any]:
    jobs_tag = ["jobs"]
    return {
        "/api/v1/health": {
            "get": {
                "summary": "Health of the system (no auth)",
                "tags": ["ops"],
                "security": [],
                "responses": {"200": _json(_ref("Health"), "Healthy"), "503": _json(_ref("Health"), "Unhealthy")},
            }
        },
        "/api/v1/upload-audio": {
            "post": {
                "summary": "Upload a song and a prompt; creates a job (5 per user per hour)",
                "tags": jobs_tag,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["audio_file", "user_prompt"],
                                "properties": {
                                    "audio_file": {"type": "string", "format": "binary", "description": "≤10 MB"},
                                    "user_prompt": {"type": "string", "minLength": 50, "maxLength": 500},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(_ref("JobCreated"), "Job created"),
                    **_errors(400, 401, 413, 429, 503, 504),
                },
            }
        },
        "/api/v1/jobs": {
            "get": {
                "summary": "The caller's jobs",
                "tags": jobs_tag,
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 10, "maximum": 50}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
                ],
                "responses": {"200": _json(_ref("JobList"), "Jobs"), **_errors(400, 401)},
            }
        },
        "/api/v1/jobs/{job_id}": {
            "get": {
                "summary": "One job's status",
                "tags": jobs_tag,
                "parameters": [JOB_ID],
                "responses": {"200": _json(_ref("Job"), "The job"), **_errors(401, 403, 404)},
            }
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a queued or processing job",
                "tags": jobs_tag,
                "parameters": [JOB_ID],
                "responses": {"200": _json({"type": "object"}, "Cancelled"), **_errors(400, 401, 403, 404)},
            }
        },
        "/api/v1/jobs/{job_id}/download": {
            "get": {
                "summary": "A signed URL of the finished video (1 hour)",
                "tags": jobs_tag,
                "parameters": [JOB_ID],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "download_url": {"type": "string"},
                                "expires_in": {"type": "integer"},
                                "filename": {"type": "string"},
                            },
                        },
                        "Download link",
                    ),
                    **_errors(401, 403, 404, 410),
                },
            }
        },
        "/api/v1/jobs/{job_id}/stream-ticket": {
            "post": {
                "summary": "A single-use ticket (60 s) to open the SSE stream from a browser (?ticket=)",
                "tags": jobs_tag,
                "parameters": [JOB_ID],
                "responses": {"201": _json(_ref("StreamTicket"), "Ticket"), **_errors(401, 403, 404)},
            }
        },
        "/api/v1/jobs/{job_id}/stream": {
            "get": {
                "summary": "Server-Sent Events of one job",
                "description": (
                    "First `event: state` (no id) with job_id, status, current_stage, progress, "
                    "estimated_remaining, total_cost, video_url, error_message; then every logged event after "
                    "Last-Event-ID, then live events (stage_update, progress, message, cost_update, completed, "
                    "error), each with `id:`; `heartbeat` without id every 30 s. Closed 30 s after completed/error. "
                    "Auth: Bearer header, or `ticket` from stream-ticket."
                ),
                "tags": jobs_tag,
                "security": [{"bearer": []}, {}],
                "parameters": [
                    JOB_ID,
                    {"name": "ticket", "in": "query", "schema": {"type": "string"}},
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "Event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403, 404, 503),
                },
            }
        },
        "/api/nexus/ragnarok/direct/submit": {
            "post": {
                "summary": "Submit a RAGNAROK workflow directly",
                "tags": ["nexus"],
                "parameters": [{"name": "business_name", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("NexusJob"), "Submitted"), **_errors(401, 429, 503, 504)},
            }
        },
        "/api/nexus/ragnarok/generate/enriched": {
            "post": {
                "summary": "Submit a Trinity-enriched RAGNAROK workflow",
                "tags": ["nexus"],
                "requestBody": {"content": {JSON: {"schema": {"type": "object"}}}},
                "responses": {"200": _json(_ref("NexusJob"), "Submitted"), **_errors(401, 429, 503, 504)},
            }
        },
        "/api/nexus/ragnarok/jobs/{job_id}": {
            "get": {
                "summary": "Poll a Nexus job",
                "tags": ["nexus"],
                "parameters": [NEXUS_JOB_ID],
                "responses": {"200": _json(_ref("NexusJob"), "The job"), **_errors(401, 404)},
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["ops"],
                "security": [],
                "responses": {"200": {"description": "OpenAPI"}},
            }
        },
        "/api/v1/docs": {
            "get": {
                "summary": "Human-readable API docs",
                "tags": ["ops"],
                "security": [],
                "responses": {"200": {"description": "HTML"}},
            }
        },
        "/files/{key}": {
            "get": {
                "summary": "A locally stored object through a signed URL (Range supported)",
                "tags": ["files"],
                "security": [],
                "parameters": [
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                    {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "The file"},
                    "206": {"description": "A range"},
                    **_errors(403, 404),
                },
            }
        },
    }


DEV_PATHS: dict[str, Any] = {
    "/api/v1/dev/token": {
        "post": {
            "summary": "Development only: a HS256 token for a user id",
            "tags": ["dev"],
            "security": [],
            "requestBody": {
                "content": {JSON: {"schema": {"type": "object", "properties": {"user_id": {"type": "string"}}}}}
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"access_token": {"type": "string"}, "expires_in": {"type": "integer"}},
                    },
                    "Token",
                )
            },
        }
    },
    "/demo": {
        "get": {
            "summary": "Development only: demo page",
            "tags": ["dev"],
            "security": [],
            "responses": {"200": {"description": "HTML"}},
        }
    },
    "/demo/{path}": {
        "get": {
            "summary": "Development only: demo assets",
            "tags": ["dev"],
            "security": [],
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "Asset"}},
        }
    },
}


def document(*, development: bool, server_url: str = "/") -> dict[str, Any]:
    paths = _paths()
    if development:
        paths.update(DEV_PATHS)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Montage API", "version": "1.0.0", "description": "Music-video generation (public gateway)."},
        "servers": [{"url": server_url}],
        "security": AUTHED,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": _schemas(),
        },
        "paths": paths,
    }


def docs_page(doc: dict[str, Any]) -> str:
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            auth = "public" if op.get("security") == [] else "bearer"
            codes = ", ".join(op.get("responses", {}))
            rows.append(
                f"<tr><td><b>{method.upper()}</b></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}<br><small>{html.escape(op.get('description', ''))}</small></td>"
                f"<td>{auth}</td><td>{codes}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Montage API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{border-top:1px solid #ddd;padding:.4em;vertical-align:top}</style>"
        "</head><body><h1>Montage API</h1><p>Machine-readable: <a href='/api/v1/openapi.json'>openapi.json</a> "
        "(OpenAPI 3.1). Authenticate with <code>Authorization: Bearer &lt;Supabase JWT&gt;</code>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Auth</th><th>Responses</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


class DocsHandler:
    def __init__(self, *, development: bool) -> None:
        self.doc = document(development=development)
        self.page = docs_page(self.doc)

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(self.doc)

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page, content_type="text/html")
