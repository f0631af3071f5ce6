"""SSE: state first, replay + live without gap or duplicate, reconnects, replicas, caps, tickets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientResponse
from montage_common.events import id_key

from tests.gateway.conftest import Gateways, Orchestrator, SseEvent, bearer, next_event

Emit = Callable[[str, str, dict[str, Any]], Awaitable[str]]


async def open_stream(gw: Any, job: str, user: str, last_id: str | None = None) -> ClientResponse:
    headers = bearer(user)
    if last_id:
        headers["Last-Event-ID"] = last_id
    resp: ClientResponse = await gw.get(f"/api/v1/jobs/{job}/stream", headers=headers)
    return resp


async def collect(resp: ClientResponse, n: int) -> list[SseEvent]:
    out = []
    for _ in range(n):
        ev = await next_event(resp)
        assert ev is not None, f"stream ended after {len(out)} events"
        out.append(ev)
    return out


async def wait_until(cond: Callable[[], Awaitable[bool]], tries: int = 500) -> None:
    for _ in range(tries):
        if await cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_state_first_then_events_then_close_after_final(gw: Any, orchestrator: Orchestrator, emit: Emit) -> None:
    job = orchestrator.fake.add_job("u1", progress=20, current_stage="scene_planner", total_cost=1.25)
    old = await emit(job, "progress", {"progress": 10, "estimated_remaining": 300})
    resp = await open_stream(gw, job, "u1")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in resp.headers
    state = await next_event(resp)
    # A fresh connection: the state stands for the log up to the newest event, whose id it
    # carries; that older event is not sent again as if new.
    assert state is not None and state.event == "state" and state.id == old
    assert state.data["progress"] == 20 and state.data["current_stage"] == "scene_planner"
    assert state.data["total_cost"] == 1.25 and state.data["job_id"] == job
    await emit(job, "stage_update", {"stage": "audio_parser", "status": "completed", "duration": 1.5})
    await emit(job, "completed", {"video_url": "http://x/v.mp4", "total_cost": 2.0})
    live = await collect(resp, 2)
    assert [e.event for e in live] == ["stage_update", "completed"]
    assert live[0].data == {"stage": "audio_parser", "status": "completed", "duration": 1.5}
    assert await next_event(resp) is None  # closed shortly after the final event


async def test_fresh_connection_replays_nothing_old_and_0_0_replays_all(
    gw: Any, orchestrator: Orchestrator, emit: Emit
) -> None:
    job = orchestrator.fake.add_job("u1b")
    empty = await open_stream(gw, job, "u1b")
    assert (await collect(empty, 1))[0].id == "0-0"  # an empty log: everything that comes is new
    empty.close()
    sent = [await emit(job, "cost_update", {"stage": "audio_parser", "cost": 0.01, "total": 0.01 * (i + 1)})
            for i in range(3)]  # fmt: skip
    fresh = await open_stream(gw, job, "u1b")
    state = (await collect(fresh, 1))[0]
    assert state.event == "state" and state.id == sent[-1]
    sent.append(await emit(job, "message", {"text": "new", "stage": "audio_parser"}))
    (live,) = await collect(fresh, 1)
    assert (live.event, live.id) == ("message", sent[-1])
    fresh.close()
    whole = await open_stream(gw, job, "u1b", last_id="0-0")
    events = await collect(whole, 5)
    assert events[0].event == "state" and events[0].id == "0-0"
    assert [e.id for e in events[1:]] == sent
    whole.close()


async def test_reconnect_with_last_event_id_gets_every_event_once(
    gw: Any, orchestrator: Orchestrator, emit: Emit
) -> None:
    job = orchestrator.fake.add_job("u2")
    resp = await open_stream(gw, job, "u2")
    await collect(resp, 1)  # state
    sent = [await emit(job, "progress", {"progress": i, "estimated_remaining": 100 - i}) for i in range(3)]
    first = await collect(resp, 3)
    resp.close()  # dropped mid-job
    sent += [await emit(job, "progress", {"progress": i, "estimated_remaining": 0}) for i in range(3, 6)]
    resp = await open_stream(gw, job, "u2", last_id=first[-1].id)
    assert (await collect(resp, 1))[0].event == "state"
    sent += [await emit(job, "progress", {"progress": i, "estimated_remaining": 0}) for i in range(6, 8)]
    sent.append(await emit(job, "error", {"error": "boom", "code": "MODULE_FAILURE", "retryable": False}))
    second = await collect(resp, 6)
    assert await next_event(resp) is None
    got = [e.id for e in first + second]
    assert got == sent
    assert [e.data.get("progress") for e in first + second][:8] == list(range(8))


async def test_no_gap_no_duplicate_while_events_race_the_connect(
    gw: Any, orchestrator: Orchestrator, emit: Emit
) -> None:
    """Events keep arriving while clients connect, replay and switch to live."""
    job = orchestrator.fake.add_job("u3")
    total = 150
    sent: list[str] = []

    async def producer() -> None:
        for i in range(total):
            sent.append(await emit(job, "progress", {"progress": i % 100, "estimated_remaining": i}))
            if i % 10 == 0:
                await asyncio.sleep(0)
        sent.append(await emit(job, "completed", {"video_url": "v", "total_cost": 1}))

    async def consumer(delay_events: int) -> list[str]:
        while len(sent) < delay_events:
            await asyncio.sleep(0.001)
        resp = await open_stream(gw, job, "u3", last_id="0-0")  # the whole log
        ids = []
        while (ev := await next_event(resp)) is not None:
            if ev.id and ev.event != "state":
                ids.append(ev.id)
        return ids

    task = asyncio.create_task(producer())
    results = await asyncio.gather(consumer(5), consumer(40), consumer(90))
    await task
    for ids in results:
        assert ids == sent


async def test_two_replicas_each_deliver_and_resume_across(
    gateways: Gateways, orchestrator: Orchestrator, emit: Emit, redis: Any, keys: Any
) -> None:
    gw1 = await gateways.start()
    gw2 = await gateways.start()
    job = orchestrator.fake.add_job("u4")
    a = await open_stream(gw1, job, "u4")
    b = await open_stream(gw2, job, "u4")
    c = await open_stream(gw2, job, "u4")
    for r in (a, b, c):
        await collect(r, 1)
    # One subscription per replica, however many of its clients watch the job.
    assert (await redis.pubsub_numsub(keys.job_events_channel(job)))[0][1] == 2
    sent = [await emit(job, "message", {"text": f"m{i}", "stage": "audio_parser"}) for i in range(4)]
    got_a = await collect(a, 4)
    assert [e.id for e in got_a] == sent
    for r in (b, c):
        assert [e.id for e in await collect(r, 4)] == sent
    a.close()  # client on replica 1 drops; reconnects to replica 2
    sent += [await emit(job, "message", {"text": f"m{i}", "stage": "audio_parser"}) for i in range(4, 7)]
    a2 = await open_stream(gw2, job, "u4", last_id=got_a[-1].id)
    await collect(a2, 1)
    sent.append(await emit(job, "completed", {"video_url": "v", "total_cost": 3}))
    rest = await collect(a2, 4)
    assert [e.id for e in got_a + rest] == sent
    for r in (b, c):
        assert [e.id for e in await collect(r, 4)] == sent[4:]
    for r in (a2, b, c):
        assert await next_event(r) is None
    await wait_until(lambda: _numsub_is(redis, keys.job_events_channel(job), 0))


async def _numsub_is(redis: Any, channel: str, n: int) -> bool:
    return bool((await redis.pubsub_numsub(channel))[0][1] == n)


async def test_eleventh_connection_is_503(
    gateways: Gateways, orchestrator: Orchestrator, redis: Any, keys: Any
) -> None:
    gw1 = await gateways.start(sse_heartbeat_seconds=0.05, sse_slot_lease_seconds=5)
    gw2 = await gateways.start(sse_heartbeat_seconds=0.05, sse_slot_lease_seconds=5)
    job = orchestrator.fake.add_job("u5")
    streams = []
    for i in range(10):
        r = await open_stream(gw1 if i % 2 else gw2, job, "u5")
        assert r.status == 200
        await collect(r, 1)
        streams.append(r)
    refused = await open_stream(gw1, job, "u5")
    assert refused.status == 503
    assert int(refused.headers["Retry-After"]) >= 1
    body = await refused.json()
    assert body["code"] == "TOO_MANY_CONNECTIONS" and body["retryable"] is True
    streams.pop().close()  # a dead client is found by a failed heartbeat write and its slot freed
    await wait_until(lambda: _zcard_is(redis, keys.sse_job_connections(job), 9))
    again = await open_stream(gw2, job, "u5")
    assert again.status == 200
    again.close()
    for r in streams:
        r.close()


async def _zcard_is(redis: Any, key: str, n: int) -> bool:
    return bool(await redis.zcard(key) == n)


async def test_per_user_cap(gateways: Gateways, orchestrator: Orchestrator) -> None:
    gw = await gateways.start(sse_max_per_user=2)
    jobs = [orchestrator.fake.add_job("u6") for _ in range(3)]
    a = await open_stream(gw, jobs[0], "u6")
    b = await open_stream(gw, jobs[1], "u6")
    assert (a.status, b.status) == (200, 200)
    assert (await open_stream(gw, jobs[2], "u6")).status == 503
    a.close()
    b.close()


async def test_ownership_is_checked_first(gw: Any, orchestrator: Orchestrator) -> None:
    job = orchestrator.fake.add_job("owner")
    resp = await open_stream(gw, job, "stranger")
    assert resp.status == 403
    assert (await resp.json())["code"] == "FORBIDDEN"
    resp = await open_stream(gw, "00000000-0000-0000-0000-000000000000", "owner")
    assert resp.status == 404
    assert (await gw.get(f"/api/v1/jobs/{job}/stream")).status == 401


async def test_stream_ticket_is_reusable_by_its_user_for_its_job(
    gw: Any, orchestrator: Orchestrator, emit: Emit, redis: Any, keys: Any
) -> None:
    job = orchestrator.fake.add_job("u7")
    other = orchestrator.fake.add_job("u7")
    resp = await gw.post(f"/api/v1/jobs/{job}/stream-ticket", headers=bearer("u7"))
    assert resp.status == 201
    body = await resp.json()
    assert body["expires_in"] == 1200 and len(body["ticket"]) >= 40
    first = await emit(job, "message", {"text": "a", "stage": "audio_parser"})
    stream = await gw.get(f"/api/v1/jobs/{job}/stream", params={"ticket": body["ticket"]})
    assert stream.status == 200
    assert (await collect(stream, 1))[0].id == first
    stream.close()
    # What an EventSource does after a drop: the same URL again, with Last-Event-ID.
    second = await emit(job, "message", {"text": "b", "stage": "audio_parser"})
    again = await gw.get(
        f"/api/v1/jobs/{job}/stream", params={"ticket": body["ticket"]}, headers={"Last-Event-ID": first}
    )
    assert again.status == 200
    events = await collect(again, 2)
    assert [e.event for e in events] == ["state", "message"] and events[1].id == second
    again.close()
    # A ticket is bound to its job (and trying another job does not spend it).
    assert (await gw.get(f"/api/v1/jobs/{other}/stream", params={"ticket": body["ticket"]})).status == 401
    # Only the owner gets tickets; forged and expired tickets are refused; only a hash is stored.
    assert (await gw.post(f"/api/v1/jobs/{job}/stream-ticket", headers=bearer("u8"))).status == 403
    assert (await gw.get(f"/api/v1/jobs/{job}/stream", params={"ticket": "forged"})).status == 401
    assert await redis.get(keys.stream_ticket(body["ticket"])) is None
    async for key in redis.scan_iter(match=keys.stream_ticket("*")):
        await redis.delete(key)  # every ticket of this namespace expires now
    assert (await gw.get(f"/api/v1/jobs/{job}/stream", params={"ticket": body["ticket"]})).status == 401


async def test_heartbeats_have_no_id(gateways: Gateways, orchestrator: Orchestrator) -> None:
    gw = await gateways.start(sse_heartbeat_seconds=0.05)
    job = orchestrator.fake.add_job("u9")
    resp = await open_stream(gw, job, "u9")
    await collect(resp, 1)
    beat = await next_event(resp, skip_heartbeats=False)
    assert beat is not None and beat.event == "heartbeat" and beat.id is None and "timestamp" in beat.data
    resp.close()


async def test_finished_job_stream_replays_and_closes(gw: Any, orchestrator: Orchestrator, emit: Emit) -> None:
    job = orchestrator.fake.add_job("u10", status="completed", progress=100)
    ids = [await emit(job, "progress", {"progress": 100, "estimated_remaining": 0})]
    ids.append(await emit(job, "completed", {"video_url": "v", "total_cost": 1}))
    resp = await open_stream(gw, job, "u10", last_id=ids[0])
    events = await collect(resp, 2)
    assert [e.event for e in events] == ["state", "completed"] and events[1].id == ids[1]
    assert await next_event(resp) is None
    assert id_key(ids[1]) > id_key(ids[0])
    # A fresh connection gets the final state, not the old `completed` as if it just happened.
    fresh = await open_stream(gw, job, "u10")
    state = await next_event(fresh)
    assert state is not None and state.event == "state" and state.id == ids[1]
    assert state.data["status"] == "completed"
    assert await next_event(fresh) is None
    # Resuming after the final event: 204, which stops an EventSource's reconnects.
    done = await open_stream(gw, job, "u10", last_id=ids[1])
    assert done.status == 204 and done.headers["X-Request-ID"]
