"""The action log (``admin_actions``): every operator action, done or refused, with who did it.

Written in the transaction of the action itself where there is one (a retry, a cancel), so the
log and the change commit together; read by ``GET /api/v1/admin/actions`` and the job page.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import asyncpg
import msgspec
from aiohttp import web
from montage_common.web import query_int
from montage_contracts import api
from montage_contracts.api import timestamp
from montage_contracts.errors import ValidationError

from montage_orchestrator import store
from montage_orchestrator.admin.access import admin
from montage_orchestrator.http import respond

Outcome = Literal["done", "not_found", "conflict"]  # api.AdminAction.outcome
_json = msgspec.json.Encoder(decimal_format="number")


async def record_action(  # noqa: PLR0917
    conn: asyncpg.Connection | asyncpg.Pool,
    actor: str,
    action: str,
    target: str,
    job_id: uuid.UUID | None,
    outcome: Outcome,
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


def action_row(r: asyncpg.Record) -> api.AdminAction:
    detail = r["detail"]
    return api.AdminAction(
        id=r["id"],
        actor=r["actor"],
        action=r["action"],
        target=r["target"],
        job_id=str(r["job_id"]) if r["job_id"] else None,
        outcome=r["outcome"],
        detail=msgspec.json.decode(detail) if isinstance(detail, str | bytes) else (detail or {}),
        request_id=r["request_id"],
        created_at=timestamp(r["created_at"]),
    )


async def list_actions(request: web.Request) -> web.Response:
    deps, _ = admin(request)
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
    return respond(api.AdminActions(actions=[action_row(r) for r in rows]))
