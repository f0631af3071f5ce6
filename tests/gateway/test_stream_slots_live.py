"""A closed stream frees its connection slot at once, in the real server.

``montage_common.web.serve`` (like ``web.run_app``) does not cancel a handler whose client went
away, so a stream waiting for events would hold its per-job slot until its next heartbeat write
(30 s). aiohttp's ``TestServer`` cancels handlers and cannot show this; this test runs a gateway
process started as production starts it (``python -m montage_gateway``), next to the session's
stack, with streams that would otherwise stay open for minutes after the job's end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from montage_common.redis import create_redis
from montage_contracts.keys import Keys
from montage_dev.devstack import ServiceSpec, free_port, wait_port

from tests.e2e.flows import FinishedJob
from tests.stack import RunningStack, dev_token

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PER_JOB = 10  # the gateway's SSE_MAX_PER_JOB default
FREED_WITHIN = 1.0  # the requirement: a closed stream's slot is free again within 1 s


@pytest.fixture(scope="module")
def slow_closing_gateway(e2e_stack: RunningStack) -> Iterator[str]:
    """A second gateway process whose streams stay open 10 minutes after a job's end."""
    base = e2e_stack.stack.specs["gateway"]
    port, ops = free_port(), free_port()
    env = {**base.env, "PORT": str(port), "OPS_PORT": str(ops), "SSE_CLOSE_AFTER_FINAL_SECONDS": "600"}
    e2e_stack.stack.spawn(ServiceSpec("gateway-slots", base.argv, env, port))
    try:
        wait_port("127.0.0.1", port, time.monotonic() + 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        e2e_stack.stack.stop_one("gateway-slots")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
        yield session


async def _open(http: aiohttp.ClientSession, url: str, job_id: str, token: str) -> aiohttp.ClientResponse:
    resp = await http.get(f"{url}/api/v1/jobs/{job_id}/stream", headers={"Authorization": f"Bearer {token}"})
    if resp.status == 200:
        assert (await resp.content.readline()).startswith(b"event: state")  # the handler is streaming
    return resp


async def test_closed_streams_free_their_slots_within_a_second(
    e2e_stack: RunningStack, finished_job: FinishedJob, slow_closing_gateway: str, http: aiohttp.ClientSession
) -> None:
    url, job_id = slow_closing_gateway, finished_job.job_id
    token = await dev_token(http, url, finished_job.user)
    redis = create_redis(e2e_stack.redis_url)
    slots = Keys(e2e_stack.namespace).sse_job_connections(job_id)
    try:
        streams = [await _open(http, url, job_id, token) for _ in range(PER_JOB)]
        assert [r.status for r in streams] == [200] * PER_JOB
        assert await redis.zcard(slots) == PER_JOB
        refused = await _open(http, url, job_id, token)
        assert refused.status == 503 and (await refused.json())["code"] == "TOO_MANY_CONNECTIONS"

        # Ten tabs close; the streams would otherwise stay open for ten minutes.
        closed_at = time.monotonic()
        for r in streams:
            r.close()
        count = PER_JOB
        while time.monotonic() - closed_at < FREED_WITHIN:  # bounded wait: at most 1 s
            count = await redis.zcard(slots)
            if count == 0:
                break
            await asyncio.sleep(0.01)
        freed_after = time.monotonic() - closed_at
        assert count == 0, f"{count} slot(s) still held {FREED_WITHIN} s after their clients closed"

        eleventh = await _open(http, url, job_id, token)
        accepted_after = time.monotonic() - closed_at
        assert eleventh.status == 200, await eleventh.text()
        assert accepted_after <= FREED_WITHIN, accepted_after
        e2e_stack.timings["sse_slot_freed_seconds"] = freed_after
        e2e_stack.timings["sse_eleventh_accepted_seconds"] = accepted_after
        print(
            f"slots freed {freed_after * 1000:.0f} ms after close; 11th accepted after {accepted_after * 1000:.0f} ms"
        )
        eleventh.close()
    finally:
        await redis.aclose()
