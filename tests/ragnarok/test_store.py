"""Leases in Postgres: concurrent claims never share a job; expired leases are taken over; a
replica that lost its lease cannot write."""

from __future__ import annotations

import asyncio

import asyncpg
from montage_ragnarok.store import JobStore

from .conftest import unique


async def _jobs(store: JobStore, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        job = await store.insert(
            job_id=unique("job"),
            user_id="u",
            workflow_id=unique("wf"),
            kind="direct",
            business_name="b",
            status="queued",
            request={},
            enrichment=None,
            trace_id="nxs_1_a",
            first_poll_in=0.0,
        )
        ids.append(job.job_id)
    return ids


async def test_concurrent_claims_are_disjoint_and_leases_expire(pool: asyncpg.Pool, parked_jobs: None) -> None:
    store = JobStore(pool)
    ids = set(await _jobs(store, 30))
    claims = await asyncio.gather(*(store.claim(f"r{i}", 0.3, 10) for i in range(4)))
    claimed = [c.job.job_id for batch in claims for c in batch]
    assert len(claimed) == len(set(claimed)) == 30
    assert set(claimed) == ids
    assert await store.claim("late", 30, 100) == []  # all leased

    owner_of = {c.job.job_id: f"r{i}" for i, batch in enumerate(claims) for c in batch}
    job_id = next(iter(ids))

    async def expired() -> list[str]:
        return [c.job.job_id for c in await store.claim("taker", 30, 100)]

    taken: set[str] = set()
    for _ in range(100):  # the 0.3 s leases expire; later claims take every job over
        taken |= set(await expired())
        if taken == ids:
            break
        await asyncio.sleep(0.05)
    assert set(taken) == ids
    # the previous owner lost the lease: its write-back is refused, the new owner's is accepted
    assert not await store.record_progress(job_id, owner_of[job_id], status="processing", streak=0, next_poll_in=1)
    assert await store.record_progress(job_id, "taker", status="processing", streak=0, next_poll_in=1)
    assert (await store.get(job_id)).status == "processing"  # type: ignore[union-attr]
