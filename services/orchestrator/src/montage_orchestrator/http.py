"""What every handler of the orchestrator shares: the body it answers, and how it reads a job id.

One home for both, so the owner's routes (:mod:`montage_orchestrator.routes`) and the operator
console's (:mod:`montage_orchestrator.admin`) answer the same way: a body is a Struct of
``montage_contracts.api`` encoded by msgspec (money as JSON numbers), never a dict; a job id that
is not a UUID is a job that does not exist (404), as in the document.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import msgspec
from aiohttp import web
from montage_contracts.errors import Forbidden, NotFound

from montage_orchestrator import store

_json = msgspec.json.Encoder(decimal_format="number")


def respond(body: msgspec.Struct, status: int = 200) -> web.Response:
    """A contract body (a Struct of ``montage_contracts.api``), encoded by msgspec."""
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def job_uuid(request: web.Request) -> uuid.UUID:
    """The ``{job_id}`` of the path; 404 when it is not a UUID (no job has that id)."""
    job_id = store.as_uuid(request.match_info["job_id"])
    if job_id is None:
        raise NotFound("Job not found")
    return job_id


def owned(row: asyncpg.Record | dict[str, Any] | None, user: str) -> None:
    """The job exists (404) and is ``user``'s (403)."""
    if row is None:
        raise NotFound("Job not found")
    if row["user_id"] != user:
        raise Forbidden("Job belongs to another user", job_id=str(row["job_id"]))
