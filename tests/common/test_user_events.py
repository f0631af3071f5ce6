"""The per-user event log (``montage_common.user_events``): how it is keyed (one slot per user, so
the copy script is cluster-safe, and users spread over the slots) and how the copy behaves against
a real Redis: each job event copied once, in order, whoever copies and however often; trimmed;
expiring; published live; a job forgotten. On a real cluster: ``tests/common/test_user_events_cluster.py``."""

from __future__ import annotations

import asyncio
from typing import Any

from montage_common.events import event_emit
from montage_common.user_events import (
    USER_LOG_TTL_SECONDS,
    UserLog,
    last_user_event,
    parse_user_published,
    render_user_event,
    replay_user,
)
from montage_contracts.api import MessageData, PreviewData, ProgressData
from montage_contracts.events import encode_event
from montage_contracts.keys import SLOTS, Keys, key_slot
from montage_streams import StreamProducer
from redis.asyncio import Redis


def test_every_key_of_a_user_is_in_one_slot_and_users_spread_over_the_cluster() -> None:
    keys = Keys("montage", partitions=6, sharded_events=True)
    slots = set()
    for n in range(2000):
        user = f"user-{n}"
        mine = {
            key_slot(keys.user_events_stream(user)),
            key_slot(keys.user_event_cursors(user)),
            key_slot(keys.user_events_channel(user)),
        }
        assert len(mine) == 1, user  # the copy script (XADD + HSET + SPUBLISH) touches one slot
        assert keys.user_events_stream(user).startswith("{montage:user:" + user + "}")
        slots |= mine
    # 2000 users over 16 384 slots: nearly all distinct, and every third of the slot space (a
    # 3-primary cluster's nodes) holds about a third of them
    assert len(slots) > 1850
    thirds = [sum(1 for s in slots if k * SLOTS // 3 <= s < (k + 1) * SLOTS // 3) for k in range(3)]
    assert all(abs(t - len(slots) / 3) < len(slots) * 0.06 for t in thirds), thirds
    # a user id with braces keeps all its keys together too (the tag ends at the first "}")
    odd = "a}b{c"
    assert key_slot(keys.user_events_stream(odd)) == key_slot(keys.user_event_cursors(odd))
    # another namespace (another deployment on the same Redis) has other keys
    assert Keys("other").user_events_stream("u") != Keys("montage").user_events_stream("u")


async def _log_job_events(redis: Redis, keys: Keys, job_id: str, datas: list[Any]) -> None:
    """Log events exactly as the orchestrator's hand-off does (``event_emit``)."""
    await StreamProducer(redis).emit([event_emit(keys, job_id, d) for d in datas])


def _messages(job: str, n: int, start: int = 0) -> list[Any]:
    return [MessageData(text=f"{job} step {i}", stage="video_generator") for i in range(start, start + n)]


async def test_a_batch_copies_many_jobs_and_a_remembered_cursor_never_loses_or_doubles(
    redis: Redis, keys: Keys
) -> None:
    # two processes (two UserLog instances) copy the same jobs in batches, each remembering where it
    # read up to: what the other copied meanwhile is read again and skipped; what Redis lost is
    # copied again only by a fresh (sweep) batch, which reads the cursors Redis keeps
    one, two = UserLog(redis, keys), UserLog(redis, keys)
    jobs = [("carol", "job-c1"), ("carol", "job-c2"), ("dave", "job-d1")]
    for _, job in jobs:
        await _log_job_events(redis, keys, job, _messages(job, 2))
    assert await one.relay_many([*jobs, jobs[0]]) == 6  # a job named twice in a batch: copied once
    for _, job in jobs:
        await _log_job_events(redis, keys, job, _messages(job, 1, start=2))
    assert await two.relay_many(jobs[:2]) == 2  # the other process: its first read of the cursors
    assert await one.relay_many(jobs) == 1  # reads from where it was: c1's and c2's new ones skipped
    assert await one.relay_many(jobs) == 0
    for user, n in (("carol", 6), ("dave", 3)):
        events = await replay_user(redis, keys, user)
        assert len(events) == n and len({(e.job_id, e.event.data.text) for e in events}) == n  # type: ignore[union-attr]
    # Redis loses dave's log and cursors (e.g. a failover): a remembered cursor does not see it,
    # the sweep's fresh batch copies it again
    await redis.delete(keys.user_events_stream("dave"), keys.user_event_cursors("dave"))
    assert await one.relay_many(jobs) == 0
    assert await one.relay_many(jobs, fresh=True) == 3
    assert [e.event.data.text for e in await replay_user(redis, keys, "dave")] == [  # type: ignore[union-attr]
        f"job-d1 step {i}" for i in range(3)
    ]


async def test_copy_appends_each_event_once_in_order_however_often_and_by_whom(redis: Redis, keys: Keys) -> None:
    user, a, b = "alice", "job-a", "job-b"
    log = UserLog(redis, keys)
    await _log_job_events(redis, keys, a, _messages(a, 3))
    assert await log.relay(user, a) == 3
    assert await log.relay(user, a) == 0  # nothing twice
    await _log_job_events(redis, keys, b, _messages(b, 2))
    await _log_job_events(redis, keys, a, _messages(a, 2, start=3))
    # several copiers at once (replicas, the sweep and the hand-off hook): still once each
    copied = await asyncio.gather(*(log.relay(user, job) for job in (a, b, a, b, a)))
    assert sum(copied) == 4
    events = await replay_user(redis, keys, user)
    assert [e.job_id for e in events].count(a) == 5 and [e.job_id for e in events].count(b) == 2
    for job in (a, b):
        texts = [e.event.data.text for e in events if e.job_id == job]  # type: ignore[union-attr]
        assert texts == [f"{job} step {i}" for i in range(len(texts))]  # the job's own order
    ids = [e.entry_id for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert await last_user_event(redis, keys, user) == ids[-1]
    assert [e.entry_id for e in await replay_user(redis, keys, user, after=ids[2])] == ids[3:]
    # both keys expire (a user idle for a day has no log), refreshed by each copy
    for key in (keys.user_events_stream(user), keys.user_event_cursors(user)):
        assert 0 < await redis.ttl(key) <= USER_LOG_TTL_SECONDS
    # the job's payload is kept as logged; on the wire job_id comes first in data
    frame = render_user_event(events[0])
    assert frame.startswith(b"event: message\nid: " + ids[0].encode() + b'\ndata: {"job_id":"job-a","text":')
    # a deleted job's entries go (DELETE /api/v1/jobs/{id} may call this)
    assert await log.forget_job(user, b) == 2
    assert {e.job_id for e in await replay_user(redis, keys, user)} == {a}


async def test_copy_publishes_live_and_trims(redis: Redis, keys: Keys, redis_url: str) -> None:
    from montage_common.redis import create_redis

    user, job = "bob", "job-c"
    sub = create_redis(redis_url)
    pubsub = sub.pubsub()
    await pubsub.subscribe(keys.user_events_channel(user))
    try:
        log = UserLog(redis, keys, maxlen=50)
        datas = [ProgressData(progress=10, estimated_remaining=5), PreviewData(kind="still", index=0, url="u")]
        await _log_job_events(redis, keys, job, datas)
        await log.relay(user, job)
        got = []
        async with asyncio.timeout(5):
            while len(got) < 2:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    got.append(parse_user_published(msg["data"]))
        assert [g.job_id for g in got] == [job, job]
        assert [g.event.data for g in got] == datas
        assert [g.entry_id for g in got] == [e.entry_id for e in await replay_user(redis, keys, user)]
        # MAXLEN ~: the log stays near its cap however many events are copied
        await _log_job_events(redis, keys, job, _messages(job, 600))
        assert await log.relay(user, job) == 600
        assert 50 <= await redis.xlen(keys.user_events_stream(user)) < 200
    finally:
        await pubsub.aclose()
        await sub.aclose()


async def test_an_entry_the_code_does_not_know_is_skipped(redis: Redis, keys: Keys) -> None:
    await redis.xadd(keys.user_events_stream("carol"), {"j": "x", "e": "1-0", "m": b'{"event":"nope","data":{}}'})
    await redis.xadd(keys.user_events_stream("carol"), {"j": "x", "e": "2-0", "m": encode_event(_messages("x", 1)[0])})
    assert [e.event.event for e in await replay_user(redis, keys, "carol")] == ["message"]
