"""A client never waits for a final event Redis lost: the gateway rebuilds it from the job's
state (Postgres, through the orchestrator), and a client that saw it gets 204 on resume."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from montage_gateway.deps import GATEWAY
from redis.asyncio import Redis

from tests.gateway.conftest import Orchestrator, bearer, next_event

Emit = Callable[[str, str, dict[str, Any]], Awaitable[str]]


async def test_lost_final_event_is_rebuilt_from_state(
    gw: Any, orchestrator: Orchestrator, emit: Emit, redis: Redis
) -> None:
    job = orchestrator.fake.add_job("u-lost", current_stage="composer", progress=85)
    seen = await emit(job, "progress", {"progress": 85, "estimated_remaining": 10})
    # The job completed; its `completed` event was lost with Redis's last writes (the log is gone).
    orchestrator.fake.jobs[job].update(status="completed", progress=100, video_url="http://x/v.mp4", total_cost=1.5)
    await redis.delete(gw.app[GATEWAY].stream.keys.job_events_stream(job))

    headers = {**bearer("u-lost"), "Last-Event-ID": seen}
    resp = await gw.get(f"/api/v1/jobs/{job}/stream", headers=headers)
    assert resp.status == 200
    state = await next_event(resp)
    assert state is not None and state.event == "state" and state.data["status"] == "completed"
    final = await next_event(resp)
    assert final is not None and final.event == "completed", final
    assert final.data == {"video_url": "http://x/v.mp4", "total_cost": 1.5}
    assert await next_event(resp) is None  # closed after the final event
    again = await gw.get(f"/api/v1/jobs/{job}/stream", headers={**bearer("u-lost"), "Last-Event-ID": final.id})
    assert again.status == 204  # an EventSource stops here
