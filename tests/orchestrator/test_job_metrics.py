"""Per-job metrics: one observation per finished job, by outcome, with the job's cost."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from tests.orchestrator.conftest import Orchestrator, Reply, headers, wait_for


async def _dispatched(orch: Orchestrator, job_id: str, stage: str) -> bool:
    return any(t.stage == stage and str(t.job_id) == job_id for t in orch.fakes.tasks)


def sample(name: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(name, {"outcome": outcome}) or 0.0


def snapshot() -> dict[tuple[str, str], float]:
    names = (
        "montage_job_duration_seconds_count",
        "montage_job_total_cost_dollars_count",
        "montage_job_total_cost_dollars_sum",
    )
    return {(n, o): sample(n, o) for n in names for o in ("completed", "failed", "cancelled")}


def delta(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {k: round(v - before[k], 6) for k, v in snapshot().items() if round(v - before[k], 6)}


async def test_a_completed_job_is_observed_once_with_its_cost(orch: Orchestrator) -> None:
    before = snapshot()
    job_id = await orch.create_job()
    assert (await orch.wait_final(job_id))["status"] == "completed"
    assert delta(before) == {
        ("montage_job_duration_seconds_count", "completed"): 1,
        ("montage_job_total_cost_dollars_count", "completed"): 1,
        ("montage_job_total_cost_dollars_sum", "completed"): 0.6,  # the six stages' 0.1 each
    }


async def test_failed_and_cancelled_jobs_have_outcomes_of_their_own(orch: Orchestrator) -> None:
    before = snapshot()
    orch.fakes.behaviour["video_generator"] = lambda t: Reply(failed_clips=3, progress=[])
    failed = await orch.create_job()
    assert (await orch.wait_final(failed))["status"] == "failed"
    hold = asyncio.Event()
    orch.fakes.behaviour["video_generator"] = lambda t: Reply(hold=hold, progress=[])
    cancelled = await orch.create_job()
    assert await wait_for(lambda: _dispatched(orch, cancelled, "video_generator"))
    resp = await orch.session.post(f"{orch.url}/api/v1/jobs/{cancelled}/cancel", headers=headers())
    assert resp.status == 200
    hold.set()
    changed = delta(before)
    assert changed[("montage_job_duration_seconds_count", "failed")] == 1
    assert changed[("montage_job_duration_seconds_count", "cancelled")] == 1
    assert ("montage_job_duration_seconds_count", "completed") not in changed
    assert changed[("montage_job_total_cost_dollars_sum", "failed")] > changed.get(
        ("montage_job_total_cost_dollars_sum", "cancelled"), 0
    )
