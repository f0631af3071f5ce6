"""One result = one read without locks + one write that re-checks under the job's lock.

A change between the two (another replica's result, a cancel) is never overwritten: the write
finds the job changed and writes nothing; the pipeline reads again, or drops a result gone stale.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
from montage_contracts.messages import StageCost, StageResult, encode, task_decoder
from montage_contracts.models import CostItem
from montage_orchestrator import store
from montage_orchestrator.pipeline import Pipeline
from montage_streams import Delivery

from tests.orchestrator.conftest import Orchestrator, canned_output, headers

Factory = Callable[..., Awaitable[Orchestrator]]


def _delivery(orch: Orchestrator, entry: str, msg: StageResult | StageCost) -> Delivery:
    return Delivery(orch.deps.keys.results_stream(), "orchestrator", entry, f"m-{entry}", 1, 1, encode(msg))


def _audio_result(job_id: str, *costs: CostItem) -> StageResult:
    out = canned_output("audio_parser", job_id)
    return StageResult(
        job_id=job_id, stage="audio_parser", ok=True, output=msgspec.Raw(msgspec.json.encode(out)), costs=list(costs)
    )


def _between_read_and_write(
    monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], Awaitable[None]]
) -> list[store.JobState]:
    """Run ``meanwhile`` once, right after the first read; returns every state read."""
    real = store.read_states
    reads: list[store.JobState] = []

    async def read_states(*args: Any) -> list[store.JobState]:
        states = await real(*args)
        reads.extend(states)
        if len(reads) == len(states):
            await meanwhile()
        return states

    monkeypatch.setattr(store, "read_states", read_states)
    return reads


async def test_the_status_cache_holds_the_written_row(orchestrator_factory: Factory) -> None:
    orch = await orchestrator_factory(workers=False)
    job_id = await orch.create_job()
    emits = await Pipeline(orch.deps).handle(_delivery(orch, "1-1", _audio_result(job_id)))
    assert emits
    cached = await orch.deps.cache.get(job_id)
    assert cached is not None
    assert (cached["status"], cached["current_stage"], cached["progress"]) == ("processing", "scene_planner", 10)


async def test_a_cost_committed_meanwhile_is_kept(
    orchestrator_factory: Factory, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica records a cost of the same stage between this result's read and write."""
    orch = await orchestrator_factory(workers=False)
    job_id = await orch.create_job()
    other = Pipeline(orch.deps)  # its own per-job lock, as another process
    late_cost = StageCost(
        job_id=job_id, stage="audio_parser", cost=CostItem(call_id="c2", api_name="fake", amount=Decimal("0.30"))
    )

    async def meanwhile() -> None:
        assert await other.handle(_delivery(orch, "1-2", late_cost))

    reads = _between_read_and_write(monkeypatch, meanwhile)
    result = _audio_result(job_id, CostItem(call_id="c1", api_name="fake", amount=Decimal("0.25")))
    emits = await Pipeline(orch.deps).handle(_delivery(orch, "1-1", result))
    # the first read, the other replica's read, and this result's second read after its conflict
    assert len(reads) == 3 and reads[2].total_cost == Decimal("0.30")
    assert await pool.fetchval("SELECT total_cost FROM jobs WHERE job_id = $1::uuid", job_id) == Decimal("0.55")
    assert await pool.fetchval("SELECT count(*) FROM job_costs WHERE job_id = $1::uuid", job_id) == 2
    task = task_decoder.decode(next(e.payload for e in emits if e.stream.endswith("scene_planner")))
    assert (task.stage, task.dispatch, Decimal(task.budget_remaining)) == ("scene_planner", 1, Decimal("49.45"))
    handled = await pool.fetchval("SELECT count(*) FROM orchestrator_handled WHERE job_id = $1::uuid", job_id)
    assert handled == 2


async def test_a_cancel_meanwhile_makes_the_result_stale(
    orchestrator_factory: Factory, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch = await orchestrator_factory(workers=False)
    job_id = await orch.create_job()

    async def meanwhile() -> None:
        resp = await orch.session.post(f"{orch.url}/api/v1/jobs/{job_id}/cancel", headers=headers())
        assert resp.status == 200, await resp.text()

    _between_read_and_write(monkeypatch, meanwhile)
    result = _audio_result(job_id, CostItem(call_id="c1", api_name="fake", amount=Decimal("0.25")))
    assert await Pipeline(orch.deps).handle(_delivery(orch, "1-1", result)) == []
    row = await pool.fetchrow("SELECT status, error_code, total_cost FROM jobs WHERE job_id = $1::uuid", job_id)
    assert (row["status"], row["error_code"], row["total_cost"]) == ("failed", "CANCELLED", Decimal(0))
    assert await pool.fetchval("SELECT count(*) FROM job_costs WHERE job_id = $1::uuid", job_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM orchestrator_handled WHERE job_id = $1::uuid", job_id) == 0
    stages = await pool.fetch("SELECT stage_name, status FROM job_stages WHERE job_id = $1::uuid", job_id)
    assert {r["stage_name"]: r["status"] for r in stages} == {"audio_parser": "failed"}
