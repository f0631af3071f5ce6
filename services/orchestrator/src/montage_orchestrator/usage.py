"""``GET /internal/usage``: what Postgres knows of a user's usage, for the gateway's ``/api/v1/usage``.

Active jobs are the user's queued and processing ones; the month's spend is the cost ledger
(``job_costs``, one row per provider call) since the first instant of the calendar month in UTC,
so a job that straddles months is charged to the month each call happened in. A deleted job's
charges still count (``deleted_job_costs``, kept for billing: ``montage_orchestrator.deletion``). The job-creation
window is the gateway's rate limiter and is not read here.
"""

from __future__ import annotations

from aiohttp import web
from montage_common.web import internal_user
from montage_contracts import api
from montage_contracts.api import timestamp
from montage_contracts.pipeline import ACTIVE_STATUSES

from montage_orchestrator.deps import DEPS
from montage_orchestrator.http import respond
from montage_orchestrator.jobs import money

_QUERY = """
WITH m AS (SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS start)
SELECT m.start,
       (SELECT count(*) FROM jobs WHERE user_id = $1 AND status = ANY($2::text[])) AS active,
       (SELECT COALESCE(sum(c.cost), 0) FROM job_costs c JOIN jobs j USING (job_id)
         WHERE j.user_id = $1 AND c.created_at >= m.start)
       + (SELECT COALESCE(sum(c.cost), 0) FROM deleted_job_costs c JOIN deleted_jobs d USING (job_id)
         WHERE d.user_id = $1 AND c.created_at >= m.start) AS spent
FROM m
"""


async def internal_usage(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    user = internal_user(request, deps.settings.internal_secret)
    row = await deps.pool.fetchrow(_QUERY, user, sorted(str(s) for s in ACTIVE_STATUSES))
    assert row is not None
    body = api.InternalUsage(
        active_jobs=int(row["active"]), spent_this_month=money(row["spent"]), month_start=timestamp(row["start"])
    )
    return respond(body)
