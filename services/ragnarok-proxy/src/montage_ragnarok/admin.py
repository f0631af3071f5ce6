"""The operator console's view of the Nexus jobs: ``GET /api/v1/admin/ragnarok/jobs``.

The gateway forwards it to admins only and marks the request ``X-Montage-Role: admin``; like
every route here it needs the internal credential (``internal_only``) and a user id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from montage_common.web import Handler, internal_user, json_response, query_int, query_text
from montage_contracts.api import AdminNexusJob, AdminNexusJobs, timestamp
from montage_contracts.errors import Forbidden, ValidationError
from montage_contracts.pipeline import JOB_STATUSES, JobStatus

HEADER_ROLE = "X-Montage-Role"
ADMIN_ROLE = "admin"
STATUSES = JOB_STATUSES
_COLUMNS = (
    "job_id, user_id, workflow_id, kind, business_name, status, trace_id, video_url, cost_usd, error,"
    " poll_attempts, last_polled_at, next_poll_at, event_published_at, lease_owner, created_at, updated_at,"
    " completed_at"
)


def _iso(value: datetime | None) -> str | None:
    """The API's one time format (milliseconds), as the public Nexus routes."""
    return None if value is None else timestamp(value)


def _job(r: Any) -> AdminNexusJob:
    return AdminNexusJob(
        job_id=r["job_id"],
        user_id=r["user_id"],
        workflow_id=r["workflow_id"],
        kind=r["kind"],
        business_name=r["business_name"],
        status=JobStatus(r["status"]),
        trace_id=r["trace_id"],
        video_url=r["video_url"],
        error=r["error"],
        poll_attempts=r["poll_attempts"],
        lease_owner=r["lease_owner"],
        cost_usd=float(r["cost_usd"]) if r["cost_usd"] is not None else None,
        last_polled_at=_iso(r["last_polled_at"]),
        next_poll_at=_iso(r["next_poll_at"]),
        event_published_at=_iso(r["event_published_at"]),
        created_at=timestamp(r["created_at"]),
        updated_at=timestamp(r["updated_at"]),
        completed_at=_iso(r["completed_at"]),
    )


def list_handler(secret: str, pool_of: Any) -> Handler:
    """The handler of ``listAdminNexusJobs``; ``pool_of(app)`` gives the Postgres pool (built in the app's cleanup context)."""

    async def list_jobs(request: web.Request) -> web.Response:
        internal_user(request, secret)
        if request.headers.get(HEADER_ROLE, "") != ADMIN_ROLE:
            raise Forbidden("Admins only")
        limit = query_int(request, "limit", 50, 1, 200)
        offset = query_int(request, "offset", 0, 0, 1_000_000)
        where, args = [], []
        if status := request.query.get("status"):
            if status not in STATUSES:
                raise ValidationError(f"status must be one of {', '.join(STATUSES)}")
            args.append(status)
            where.append(f"status = ${len(args)}")
        if q := query_text(request, "q", 200):
            args.append(q)
            n = len(args)
            where.append(f"(job_id = ${n} OR workflow_id = ${n} OR trace_id = ${n} OR user_id = ${n})")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        pool = pool_of(request.app)
        total = await pool.fetchval(f"SELECT count(*) FROM nexus_jobs {clause}", *args)
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM nexus_jobs {clause} ORDER BY created_at DESC, job_id"
            f" LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
            *args,
            limit,
            offset,
        )
        counts = {r["status"]: int(r["n"]) for r in await pool.fetch(
            "SELECT status, count(*) AS n FROM nexus_jobs GROUP BY status")}  # fmt: skip
        jobs = [_job(r) for r in rows]
        counts_by_status = {s: counts.get(s, 0) for s in STATUSES}
        body = AdminNexusJobs(jobs=jobs, total=total, limit=limit, offset=offset, counts=counts_by_status)
        return json_response(body)

    return list_jobs
