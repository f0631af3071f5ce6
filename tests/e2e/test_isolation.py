"""(2) Two users: neither can see, stream, cancel or download the other's jobs."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.flows import FinishedJob
from tests.stack import ClientFactory, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DENIED = (403, 404)


def _routes(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/api/v1/jobs/{job_id}"),
        ("GET", f"/api/v1/jobs/{job_id}/stream"),
        ("POST", f"/api/v1/jobs/{job_id}/stream-ticket"),
        ("POST", f"/api/v1/jobs/{job_id}/cancel"),
        ("GET", f"/api/v1/jobs/{job_id}/download"),
    ]


async def test_another_user_is_refused_everywhere(
    finished_job: FinishedJob, as_user: ClientFactory, e2e_stack: RunningStack
) -> None:
    mallory = await as_user(unique("mallory"))
    for method, path in _routes(finished_job.job_id):
        async with mallory.session.request(method, e2e_stack.url + path, headers=mallory.headers()) as r:
            body = await r.json(content_type=None)
            assert r.status in DENIED, (method, path, r.status, body)
            assert body["code"] in ("FORBIDDEN", "NOT_FOUND") and body["error"], body
    listed = await mallory.jobs()
    assert finished_job.job_id not in [j["job_id"] for j in listed["jobs"]]
    assert listed["total"] == 0


async def test_a_ticket_is_bound_to_its_user_and_job(
    finished_job: FinishedJob, as_user: ClientFactory, e2e_stack: RunningStack
) -> None:
    alice = await as_user(finished_job.user)
    ticket = (await alice.stream_ticket(finished_job.job_id))["ticket"]
    other_job = "00000000-0000-4000-8000-000000000000"
    async with aiohttp.ClientSession() as browser:
        # a ticket for one job does not open another
        async with browser.get(f"{e2e_stack.url}/api/v1/jobs/{other_job}/stream", params={"ticket": ticket}) as r:
            assert r.status in (401, 403, 404), r.status
        # and it still opens its own job, as often as an EventSource reconnects (docs/sse.md)
        url = f"{e2e_stack.url}/api/v1/jobs/{finished_job.job_id}/stream"
        for _ in range(2):
            async with browser.get(url, params={"ticket": ticket}) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                first = await r.content.readline()
                assert first.strip(), first


async def test_no_token_is_401_everywhere(finished_job: FinishedJob, e2e_stack: RunningStack) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for method, path in [*_routes(finished_job.job_id), ("GET", "/api/v1/jobs"), ("POST", "/api/v1/upload-audio")]:
            async with anonymous.request(method, e2e_stack.url + path) as r:
                body = await r.json(content_type=None)
                assert r.status == 401, (method, path, r.status)
                assert body["code"] == "UNAUTHORIZED", body
