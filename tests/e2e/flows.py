"""Steps the end-to-end tests share: run a job to its end over SSE, check the spec's event order."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from montage_cli.client import MontageClient
from montage_cli.sse import SseEvent, job_events
from montage_common.events import id_key
from montage_contracts.pipeline import STAGE_PROGRESS, STAGES

PROMPT = (
    "A paper boat drifting through a flooded neon city at dusk, reflections rippling in time "
    "with the drums, soft pastel colours"
)
JOB_TIMEOUT = 150.0
COST_PRECISION = 1e-9  # float parsing only: money is numeric(14, 6) end to end


@dataclass
class FinishedJob:
    user: str
    job_id: str
    created: dict[str, Any]
    events: list[SseEvent] = field(default_factory=list)
    video: Path | None = None
    seconds: float = 0.0


async def follow_to_end(
    client: MontageClient,
    job_id: str,
    *,
    on_event: Callable[[SseEvent], Awaitable[None]] | None = None,
    limit: float = JOB_TIMEOUT,
) -> list[SseEvent]:
    """Every event until ``completed``/``error`` (resuming dropped streams), within ``limit`` s."""
    events: list[SseEvent] = []
    async with asyncio.timeout(limit):
        async for ev in job_events(client, job_id, backoff=(0.5, 1.0, 2.0)):
            if ev.event == "heartbeat":
                continue
            events.append(ev)
            if on_event is not None:
                await on_event(ev)
    return events


def stage_updates(events: list[SseEvent]) -> list[tuple[str, str]]:
    return [(e.json()["stage"], e.json()["status"]) for e in events if e.event == "stage_update"]


def check_spec_order(events: list[SseEvent]) -> None:
    """The pipeline's events in the order of the spec (module 2, "Orchestrator Implementation")."""
    logged = [e for e in events if e.id]
    ids = [id_key(e.id or "") for e in logged]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "event ids must increase, without duplicates"
    assert events[-1].event == "completed", [e.event for e in events[-3:]]
    assert not [e for e in events if e.event == "error"]

    updates = stage_updates(logged)
    started = [s for s, st in updates if st == "started"]
    completed = [s for s, st in updates if st == "completed"]
    assert started == list(STAGES), updates
    assert [s for s in completed if s != "composer"] == [s for s in STAGES if s != "composer"], updates
    position = {(s, st): i for i, (s, st) in enumerate(updates)}
    for i, stage in enumerate(STAGES):
        if (stage, "completed") in position:
            assert position[(stage, "started")] < position[(stage, "completed")]
        if i + 1 < len(STAGES):
            assert position[(stage, "completed")] < position[(STAGES[i + 1], "started")], updates

    # progress: the fixed marks, non-decreasing, each after its stage started
    marks = [int(e.json()["progress"]) for e in logged if e.event == "progress"]
    assert marks == sorted(marks), marks
    for stage in STAGES:
        assert STAGE_PROGRESS[stage] in marks, (stage, marks)
    order = [(e.event, e.json()) for e in logged]
    for stage in STAGES:
        mark_at = next(
            i for i, (n, d) in enumerate(order) if n == "progress" and d["progress"] == STAGE_PROGRESS[stage]
        )
        start_at = next(
            i for i, (n, d) in enumerate(order)
            if n == "stage_update" and d.get("stage") == stage and d.get("status") == "started"
        )  # fmt: skip
        assert start_at < mark_at, stage

    # cost: running totals never go down; the final total matches the last update
    totals = [float(e.json()["total"]) for e in logged if e.event == "cost_update"]
    assert totals, "no cost_update events"
    drops = [(a, b) for a, b in itertools.pairwise(totals) if b < a - COST_PRECISION]
    assert not drops, [(e.id, e.json()) for e in logged if e.event == "cost_update"]
    final = events[-1].json()
    assert final["video_url"]
    assert abs(float(final["total_cost"]) - totals[-1]) <= COST_PRECISION, (final, totals[-1])
    assert any(e.event == "message" and e.json().get("text") for e in logged), "no message events"


async def run_job(client: MontageClient, song: Path, user: str, out_dir: Path) -> FinishedJob:
    loop = asyncio.get_running_loop()
    start = loop.time()
    created = await client.upload(song, PROMPT)
    job = FinishedJob(user, str(created["job_id"]), created)
    job.events = await follow_to_end(client, job.job_id)
    if job.events[-1].event == "completed":
        job.video = await client.download(job.job_id, out_dir)
    job.seconds = loop.time() - start
    return job
