"""One stream per user (issue #25): ``GET /api/v1/events`` carries every event of every job of its
user, each with its ``job_id``, and resumes with ``Last-Event-ID`` across a gateway restart.

Real stack: the gateway is SIGKILLed while two of alice's jobs run and started again; the
connection that follows resumes from the last id it saw. Every event of both jobs arrives exactly
once, in each job's own order (compared with the jobs' own logs), and bob's job, running at the
same time, never shows up on alice's stream (nor hers on his)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from montage_cli.sse import SseEvent, SseParser, read_events
from montage_common.events import id_key, replay
from montage_common.redis import create_redis
from montage_contracts import api
from montage_contracts.events import encode_data
from montage_contracts.keys import Keys

from tests.e2e.flows import PROMPT
from tests.stack import ClientFactory, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def _open(session: aiohttp.ClientSession, url: str, last_id: str | None = None) -> aiohttp.ClientResponse:
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
    resp = await session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=90))
    assert resp.status == 200, (resp.status, await resp.text())
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return resp


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    async for ev in read_events(resp, SseParser()):
        if ev.event != "heartbeat":
            yield ev


def _typed(ev: SseEvent) -> Any:
    """The message as the document describes it (``UserSseEvent``), strictly."""
    return msgspec.convert(
        {"event": ev.event, "id": ev.id, "data": msgspec.json.decode(ev.data)}, type=api.UserSseEvent
    )


async def _job_log(stack: RunningStack, job_id: str) -> list[tuple[str, bytes]]:
    """The job's own log: (event, data) in order, as its job stream sends them."""
    redis = create_redis(stack.redis_url)
    try:
        return [(e.event, encode_data(e.data)) for _, e in await replay(redis, Keys(stack.namespace), job_id)]
    finally:
        await redis.aclose()


def _without_job_id(ev: SseEvent) -> tuple[str, bytes]:
    data = msgspec.json.decode(ev.data)
    data.pop("job_id")
    return ev.event, msgspec.json.encode(data)


async def _healthy(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(f"{url}/api/v1/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the gateway did not come back")


async def test_user_stream_carries_both_jobs_once_across_a_gateway_restart(
    e2e_stack: RunningStack, as_user: ClientFactory, song: Path
) -> None:
    alice_name, bob_name = unique("ue-alice"), unique("ue-bob")
    alice, bob = await as_user(alice_name), await as_user(bob_name)
    ticket = await alice.call("POST", "/api/v1/events/ticket")
    assert ticket["expires_in"] == 1200
    url = f"{e2e_stack.url}/api/v1/events?ticket={ticket['ticket']}"
    received: list[SseEvent] = []
    states: list[SseEvent] = []
    async with aiohttp.ClientSession() as browser:  # no Authorization header: the ticket only
        resp = await _open(browser, url)
        stream = _events(resp)
        first = await anext(stream)
        assert first.event == "state" and first.id == "0-0", first  # a new user: an empty log
        assert first.json() == {"jobs": []}
        states.append(first)

        a1 = (await alice.upload(song, PROMPT))["job_id"]
        a2 = (await alice.upload(song, PROMPT))["job_id"]
        b1 = (await bob.upload(song, PROMPT))["job_id"]

        # live events of both of alice's jobs on the one connection
        async with asyncio.timeout(120):
            async for ev in stream:
                received.append(ev)
                if {e.json()["job_id"] for e in received} == {a1, a2} and len(received) >= 8:
                    break
        # the gateway dies; the jobs go on and their events are logged meanwhile
        last_seen = received[-1].id
        assert last_seen is not None
        e2e_stack.stack.kill("gateway")
        resp.close()
        redis = create_redis(e2e_stack.redis_url)
        try:
            keys = Keys(e2e_stack.namespace)
            async with asyncio.timeout(60):
                while not await redis.xrange(keys.user_events_stream(alice_name), min=f"({last_seen}", count=1):
                    await asyncio.sleep(0.1)
        finally:
            await redis.aclose()
        e2e_stack.stack.restart("gateway")
        await _healthy(e2e_stack.url)

        # the same URL (ticket) and Last-Event-ID, as an EventSource reconnects
        resp = await _open(browser, url, last_id=last_seen)
        stream = _events(resp)
        again = await anext(stream)
        assert again.event == "state" and again.id == last_seen
        assert {j["job_id"] for j in again.json()["jobs"]} <= {a1, a2}
        states.append(again)
        resumed_at = len(received)
        finals: set[str] = {e.json()["job_id"] for e in received if e.event in ("completed", "error")}
        async with asyncio.timeout(150):
            async for ev in stream:
                received.append(ev)
                if ev.event in ("completed", "error"):
                    finals.add(ev.json()["job_id"])
                    if finals == {a1, a2}:
                        break
        resp.close()

    # every message is a documented one; only alice's jobs, each event with its job id
    for ev in received:
        _typed(ev)
    for ev in states:
        assert isinstance(_typed(ev), api.UserStateEvent)
    assert {e.json()["job_id"] for e in received} == {a1, a2}
    assert all(e.data.startswith('{"job_id":') for e in received)  # job_id first in data
    # ids increase across both connections: nothing twice, nothing out of order
    ids = [id_key(e.id or "") for e in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len(received) > resumed_at  # what was missed while the gateway was down arrived
    # per job: exactly its own log, in its order (so every event once, nothing lost in the restart)
    for job in (a1, a2):
        mine = [_without_job_id(e) for e in received if e.json()["job_id"] == job]
        assert mine == await _job_log(e2e_stack, job), job
        assert mine[-1][0] == "completed"
        assert any(name == "preview" for name, _ in mine)

    # bob's stream (bearer auth, the whole log from 0-0) has his job only, all of it
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {bob.token}"}) as s:
        resp = await _open(s, f"{e2e_stack.url}/api/v1/events", last_id="0-0")
        bobs: list[SseEvent] = []
        started = time.monotonic()
        async with asyncio.timeout(120):
            async for ev in _events(resp):
                if ev.event == "state":
                    assert {j["job_id"] for j in ev.json()["jobs"]} <= {b1}
                    continue
                bobs.append(ev)
                if ev.event == "completed":
                    break
        resp.close()
    assert {e.json()["job_id"] for e in bobs} == {b1}
    assert [_without_job_id(e) for e in bobs] == await _job_log(e2e_stack, b1)
    e2e_stack.timings["user_stream_replay_seconds"] = time.monotonic() - started


async def test_user_stream_refuses_a_job_ticket_and_no_credentials(
    e2e_stack: RunningStack, as_user: ClientFactory
) -> None:
    alice = await as_user(unique("ue-carol"))
    async with aiohttp.ClientSession() as s:
        for url in (
            f"{e2e_stack.url}/api/v1/events",
            f"{e2e_stack.url}/api/v1/events?ticket=not-a-ticket",
        ):
            async with s.get(url) as r:
                assert r.status == 401, (url, r.status)
        ticket = (await alice.call("POST", "/api/v1/events/ticket"))["ticket"]
        # an events ticket opens no job's stream
        async with s.get(
            f"{e2e_stack.url}/api/v1/jobs/00000000-0000-4000-8000-000000000000/stream?ticket={ticket}"
        ) as r:
            assert r.status == 401
        async with s.get(f"{e2e_stack.url}/api/v1/events?ticket={ticket}&last_event_id=nope") as r:
            assert r.status == 400
