"""``GET /internal/health``: database, Redis, queue size per stage, active jobs, live workers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from montage_common.pipeline import STAGES

from montage_orchestrator import metrics, store
from montage_orchestrator.deps import Deps

CHECK_SECONDS = 2.0
MAX_SCAN = 10_000


async def _stage_backlog(deps: Deps, stage: str) -> int:
    """Tasks not yet finished: unread (lag) plus delivered-but-unacked (pending)."""
    r: Any = deps.redis
    stream = deps.keys.stage_stream(stage)
    if not await r.exists(stream):
        return 0
    for g in await r.xinfo_groups(stream):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == deps.keys.stage_group(stage):
            lag = g.get("lag")
            unread = int(lag) if lag is not None else int(await r.xlen(stream))
            return unread + int(g["pending"])
    return int(await r.xlen(stream))


async def _workers(deps: Deps) -> int:
    n = 0
    async for _ in deps.redis.scan_iter(match=deps.keys.worker_heartbeat_pattern(), count=500):
        n += 1
        if n >= MAX_SCAN:
            break
    return n


async def health_report(deps: Deps) -> dict[str, Any]:
    issues: list[str] = []
    database = redis = "connected"
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
            by_stage[stage] = await asyncio.wait_for(_stage_backlog(deps, stage), CHECK_SECONDS)
        workers = await asyncio.wait_for(_workers(deps), CHECK_SECONDS)
    except Exception:
        redis = "failed"
        issues.append("redis connection failed")
    return {
        "status": "healthy" if not issues else "unhealthy",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "database": database,
        "redis": redis,
        "queue": {"size": sum(by_stage.values()), "active_jobs": active, "workers": workers, "stages": by_stage},
        "issues": issues,
    }
