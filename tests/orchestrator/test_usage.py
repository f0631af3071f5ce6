"""``GET /internal/usage``: the user's active jobs and the cost ledger of this calendar month (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from tests.orchestrator.conftest import Orchestrator, headers

COST = "INSERT INTO job_costs (job_id, stage_name, api_name, call_id, cost, created_at) VALUES ($1::uuid, 'video_generator', 'kling', $2, $3, $4)"


async def _usage(orch: Orchestrator, user: str) -> dict[str, Any]:
    resp = await orch.session.get(f"{orch.url}/internal/usage", headers=headers(user))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_usage_counts_active_jobs_and_this_months_costs(orchestrator_factory: Any, pool: asyncpg.Pool) -> None:
    orch: Orchestrator = await orchestrator_factory(workers=False)
    fresh = await _usage(orch, "u-usage")
    assert fresh["active_jobs"] == 0 and fresh["spent_this_month"] == 0
    mine = [await orch.create_job(user="u-usage") for _ in range(2)]
    theirs = await orch.create_job(user="u-other")
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    await pool.execute(COST, mine[0], "c1", Decimal("0.125"), now)
    await pool.execute(COST, mine[1], "c2", Decimal("0.0625"), now)
    await pool.execute(COST, mine[1], "c3", Decimal("7"), month_start - timedelta(seconds=1))  # last month
    await pool.execute(COST, theirs, "c4", Decimal("3"), now)  # another user's

    usage = await _usage(orch, "u-usage")
    assert usage["month_start"] == month_start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert usage["active_jobs"] == 2 and usage["spent_this_month"] == 0.1875
    assert (await _usage(orch, "u-other"))["spent_this_month"] == 3

    await pool.execute("UPDATE jobs SET status = 'failed' WHERE job_id = $1::uuid", mine[0])
    usage = await _usage(orch, "u-usage")
    assert usage["active_jobs"] == 1 and usage["spent_this_month"] == 0.1875  # a final job's costs still count


async def test_usage_is_internal_only(orch: Orchestrator) -> None:
    assert (await orch.session.get(f"{orch.url}/internal/usage")).status == 401
