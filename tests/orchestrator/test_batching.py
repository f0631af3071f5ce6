"""Results handled at once share one read and one write statement (``batching.Coalescer``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg
import msgspec
from montage_contracts.messages import StageResult, encode
from montage_contracts.models import CostItem
from montage_orchestrator.batching import Coalescer
from montage_orchestrator.jobs import RATES
from montage_orchestrator.pipeline import Pipeline
from montage_streams import Delivery

from tests.orchestrator.conftest import Orchestrator, canned_output


async def test_calls_of_one_turn_are_one_batch() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        return [i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(run, max_batch=3)
    assert await asyncio.gather(*(c(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert batches == [[0, 1, 2], [3, 4]]
    assert await c(7) == 70 and batches[-1] == [7]


async def test_a_bad_item_fails_only_its_own_call() -> None:
    async def run(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("bad batch")
        return items

    async def alone(item: int) -> int:
        if item == 13:
            raise ValueError("bad item")
        return item

    c: Coalescer[int, int] = Coalescer(run, alone=alone)
    got = await asyncio.gather(c(1), c(13), c(2), return_exceptions=True)
    assert got[0] == 1 and got[2] == 2 and isinstance(got[1], ValueError) and str(got[1]) == "bad item"


async def test_results_of_many_jobs_at_once(
    orchestrator_factory: Callable[..., Awaitable[Orchestrator]], pool: asyncpg.Pool
) -> None:
    """Eight jobs' results handled concurrently: one batch each way, every job advanced once."""
    orch = await orchestrator_factory(workers=False)
    jobs = [await orch.create_job(user=f"user-{i}") for i in range(8)]
    pipeline = Pipeline(orch.deps)
    writes: list[int] = []
    real = pipeline._write_batch

    async def counting(changes: list) -> list:  # type: ignore[type-arg]
        writes.append(len(changes))
        return await real(changes)

    pipeline._write = Coalescer(counting)

    def delivery(i: int, job_id: str) -> Delivery:
        out = canned_output("audio_parser", job_id)
        result = StageResult(
            job_id=job_id,
            stage="audio_parser",
            ok=True,
            output=msgspec.Raw(msgspec.json.encode(out)),
            costs=[CostItem(call_id=f"c{i}", api_name="fake", amount=Decimal("0.01") * (i + 1))],
        )
        return Delivery(orch.deps.keys.results_stream(), "orchestrator", f"1-{i}", f"m{i}", 1, 1, encode(result))

    await RATES.refresh(pool)  # read at most once a minute: now, so that no handler waits on it below
    emitted = await asyncio.gather(*(pipeline.handle(delivery(i, j)) for i, j in enumerate(jobs)))
    assert all(emitted) and writes == [8]
    rows = await pool.fetch(
        "SELECT job_id::text AS id, status, current_stage, total_cost FROM jobs WHERE job_id = ANY($1::uuid[])", jobs
    )
    by_id = {r["id"]: r for r in rows}
    for i, job_id in enumerate(jobs):
        r = by_id[job_id]
        assert (r["status"], r["current_stage"], r["total_cost"]) == (
            "processing",
            "scene_planner",
            Decimal("0.01") * (i + 1),
        )
    assert await pool.fetchval("SELECT count(*) FROM orchestrator_handled WHERE job_id = ANY($1::uuid[])", jobs) == 8
