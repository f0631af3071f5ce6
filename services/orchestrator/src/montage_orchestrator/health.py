"""``GET /internal/health``: database, Redis, queue size per stage, active jobs, live workers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from montage_contracts import api
from montage_contracts.api import timestamp
from montage_contracts.pipeline import STAGES
from montage_streams import group_stats

from montage_orchestrator import metrics, store
from montage_orchestrator.deps import Deps

CHECK_SECONDS = 2.0
MAX_SCAN = 10_000


async def stage_backlog(deps: Deps, stage: str) -> int:
    """Tasks not yet finished: unread (lag) plus delivered-but-unacked (pending), in every partition."""
    total = 0
    for stream in deps.keys.stage_streams(stage):
        total += (await group_stats(deps.redis, stream, deps.keys.stage_group(stage))).backlog
    return total


async def _count(deps: Deps, pattern: str) -> int:
    n = 0
    async for _ in deps.redis.scan_iter(match=pattern, count=500):
        n += 1
        if n >= MAX_SCAN:
            break
    return n


async def stage_workers(deps: Deps, stage: str) -> int:
    """Workers of ``stage`` with a live heartbeat."""
    return await _count(deps, deps.keys.worker_heartbeat(stage, "*"))


async def export_stage_gauges(deps: Deps) -> None:
    """``montage_stage_backlog`` and ``montage_stage_workers`` for every stage, from outside the
    workers, so "work waiting and no worker" stays visible when every worker is gone."""
    for stage in STAGES:
        metrics.STAGE_BACKLOG.labels(stage).set(await stage_backlog(deps, stage))
        metrics.STAGE_WORKERS.labels(stage).set(await stage_workers(deps, stage))


async def health_report(deps: Deps) -> api.InternalHealth:
    issues: list[str] = []
    database: api.DependencyState = "connected"
    redis: api.DependencyState = "connected"
    active = 0
    try:
        active = await asyncio.wait_for(store.count_active(deps.pool), CHECK_SECONDS)
        metrics.ACTIVE_JOBS.set(active)
    except Exception:
        database = "failed"
        issues.append("database connection failed")
    by_stage: dict[str, int] = {}
    workers = 0
    try:
        await asyncio.wait_for(deps.redis.ping(), CHECK_SECONDS)
        for stage in STAGES:
            by_stage[stage] = await asyncio.wait_for(stage_backlog(deps, stage), CHECK_SECONDS)
        workers = await asyncio.wait_for(_count(deps, deps.keys.worker_heartbeat_pattern()), CHECK_SECONDS)
    except Exception:
        redis = "failed"
        issues.append("redis connection failed")
    return api.InternalHealth(
        status="healthy" if not issues else "unhealthy",
        timestamp=timestamp(datetime.now(UTC)),
        database=database,
        redis=redis,
        queue=api.Queue(size=sum(by_stage.values()), active_jobs=active, workers=workers, stages=by_stage),
        issues=issues,
    )
