"""Two proxy replicas (real processes) share the polling of 50 workflows through Postgres leases:
no workflow is ever polled by both at once, and killing one hands its work to the other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg
from montage_contracts.keys import Keys
from montage_ragnarok.settings import ProxySettings
from redis.asyncio import Redis

from .conftest import Replica, Served, headers, ragnarok_events, unique, wait_for

P = "/api/nexus/ragnarok"
N = 50


async def test_two_replicas_share_polling_and_survive_a_sigkill(
    http: aiohttp.ClientSession,
    fake_ragnarok: Served,
    proxy_settings: Callable[..., ProxySettings],
    spawn_replica: Callable[[ProxySettings, str], Awaitable[Replica]],
    database_url: str,
    redis: Redis,
    keys: Keys,
) -> None:
    # slow enough that the kill lands mid-flight; status calls take a while so overlaps would show
    async with http.post(f"{fake_ragnarok.url}/_control", json={"step_seconds": 1.5, "poll_delay_seconds": 0.05}) as r:
        assert r.status == 200
    settings = proxy_settings(poll_batch_size=8, poll_concurrency=4, poll_max_interval_seconds=0.3, trinity_url="")
    r1, r2 = await asyncio.gather(spawn_replica(settings, "replica-1"), spawn_replica(settings, "replica-2"))

    async def submit(i: int) -> dict[str, str]:
        replica = (r1, r2)[i % 2]
        async with http.post(
            f"{replica.url}{P}/direct/submit", params={"business_name": unique(f"Biz{i}")}, headers=headers()
        ) as resp:
            assert resp.status == 202, await resp.text()
            return dict(await resp.json())

    jobs = await asyncio.gather(*(submit(i) for i in range(N)))
    workflows = {j["workflow_id"] for j in jobs}
    state = fake_ragnarok.state

    async def both_polling() -> bool:
        pollers = set().union(*(state.pollers.get(w, set()) for w in workflows))
        return pollers >= {"replica-1", "replica-2"}

    await wait_for(both_polling)
    conn = await asyncpg.connect(database_url)
    try:
        job_ids = [j["job_id"] for j in jobs]
        final_at_kill = await conn.fetchval(
            "SELECT count(*) FROM nexus_jobs WHERE job_id = ANY($1::text[]) AND status IN ('completed', 'failed')",
            job_ids,
        )
        assert final_at_kill < N  # the kill lands midway
        r1.kill()  # SIGKILL: no clean-up, its leases are left to expire

        async def all_final() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM nexus_jobs WHERE job_id = ANY($1::text[]) AND status = 'completed'"
                " AND next_poll_at IS NULL",
                job_ids,
            )
            return bool(n == N)

        await wait_for(all_final, attempts=400)
    finally:
        await conn.close()

    # every workflow polled by one replica at a time, ever
    assert max(state.max_in_flight[w] for w in workflows) == 1
    assert all(state.polls[w] >= 1 for w in workflows)
    # the survivor answers for every job, with the final state
    for job in jobs[:5]:
        async with http.get(f"{r2.url}{P}/jobs/{job['job_id']}", headers=headers()) as resp:
            body = await resp.json()
            assert (body["status"], body["cost_usd"]) == ("completed", 2.64)
    # a final event for every job (at least once: a replica killed mid-publish may leave a duplicate)
    events = await ragnarok_events(redis, keys)
    assert {e.job_id for e in events} == {j["job_id"] for j in jobs}
    assert {e.status for e in events} == {"completed"}

    # SIGTERM: the survivor stops its poller, releases its leases and exits cleanly
    r2.proc.terminate()

    async def exited() -> bool:
        return r2.proc.poll() is not None

    await wait_for(exited)
    assert r2.proc.returncode == 0
    assert "leases_released" in r2.log.read_text()
