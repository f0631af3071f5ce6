"""Retries: exponential backoff, durable across restarts, dead letters for poison entries."""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Awaitable, Callable, Sequence

import pytest
from montage_contracts.errors import RetryableError
from montage_streams import DeadLetter, Delivery, Emit, RetryPolicy, StreamConsumer

from tests.streams.conftest import Harness, wait_until

Start = Callable[[StreamConsumer], Awaitable[object]]


def recording_consumer(h: Harness, starts: list[tuple[str, int, float]], **kw: object) -> StreamConsumer:
    import time

    async def handler(d: Delivery) -> Sequence[Emit]:
        starts.append((d.message_id, d.attempt, time.monotonic()))
        spec = json.loads(d.payload)
        if spec.get("fail"):
            raise RetryableError(f"transient failure {d.attempt}")
        return [Emit(h.out_stream, json.dumps({"mid": d.message_id}).encode(), message_id=d.message_id)]

    def dead(d: Delivery, dl: DeadLetter) -> Sequence[Emit]:
        body = json.dumps({"mid": d.message_id, "code": dl.code, "attempts": dl.attempts}).encode()
        return [Emit(h.keys.results_stream(), body, message_id=d.message_id)]

    return StreamConsumer(h.redis, h.stream, h.group, handler, h.keys, consumer="c", block_ms=100,
                          on_dead_letter=dead, **kw)  # type: ignore[arg-type]  # fmt: skip


async def test_poison_is_dead_lettered_and_does_not_delay_healthy_entries(harness: Harness, running: Start) -> None:
    starts: list[tuple[str, int, float]] = []
    # One slot only: healthy entries can pass the poison only if its retries wait outside the stream.
    await running(recording_consumer(harness, starts, concurrency=1, retry=RetryPolicy((0.5, 0.5, 0.5))))
    await harness.produce("poison", fail=True)
    healthy = {f"ok{i}" for i in range(5)}
    for mid in sorted(healthy):
        await harness.produce(mid)
    assert await harness.wait_outputs(healthy) == dict.fromkeys(healthy, 1)

    dead_stream = harness.keys.dead_letter_stream(harness.stream)
    (entry,) = await wait_until(lambda: harness.redis.xrange(dead_stream), "the dead letter")
    fields = entry[1]
    assert fields[b"id"] == b"poison"
    assert fields[b"code"] == b"MODULE_FAILURE"
    assert fields[b"error"] == b"transient failure 4"
    history = json.loads(fields[b"history"])
    assert [h.split(":")[0] for h in history] == ["attempt 1", "attempt 2", "attempt 3", "attempt 4"]
    # every healthy entry ran before the poison's first retry
    order = [mid for mid, _, _ in starts]
    assert set(order[: order.index("poison", 1)]) >= healthy
    assert [a for mid, a, _ in starts if mid == "poison"] == [1, 2, 3, 4]
    (result,) = await harness.outputs(harness.keys.results_stream())
    assert result["mid"] == "poison" and result["attempts"] == 4
    assert "poison" not in await harness.out_counts()
    assert await harness.pending() == 0


async def test_retry_delays_double(harness: Harness, running: Start) -> None:
    starts: list[tuple[str, int, float]] = []
    await running(recording_consumer(harness, starts, retry=RetryPolicy((0.2, 0.4, 0.8))))
    await harness.produce("flaky", fail=True)
    dead_stream = harness.keys.dead_letter_stream(harness.stream)
    await wait_until(lambda: harness.redis.xlen(dead_stream), "the dead letter")
    times = [t for mid, _, t in starts if mid == "flaky"]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps


async def test_fatal_error_is_dead_lettered_at_once(harness: Harness) -> None:
    await harness.spawn("a")
    await harness.produce("fatal", fail="fatal")
    await harness.produce("fine")
    await harness.wait_outputs({"fine"})
    dead_stream = harness.keys.dead_letter_stream(harness.stream)
    (entry,) = await wait_until(lambda: harness.redis.xrange(dead_stream), "the dead letter")
    assert entry[1][b"code"] == b"MODULE_FAILURE"
    assert await harness.runs("fatal") == 1
    assert await harness.redis.zcard(harness.keys.delayed_zset()) == 0


async def test_pending_retry_survives_restart_of_every_consumer(harness: Harness) -> None:
    await harness.spawn("a", "--backoff", "2")
    await harness.spawn("b", "--backoff", "2")
    await harness.produce("retry-me", fail="retryable", fail_runs=1)
    delayed = harness.keys.delayed_zset()
    await wait_until(lambda: harness.redis.zcard(delayed), "the retry to be scheduled")
    for name in ("a", "b"):
        harness.signal(name, signal.SIGTERM)
    assert [await harness.wait_exit(name) for name in ("a", "b")] == [0, 0]
    # every consumer is gone; the retry waits in Redis, not in any process
    assert await harness.redis.zcard(delayed) == 1
    assert await harness.out_counts() == {}

    await harness.spawn("c", "--backoff", "2")
    assert await harness.wait_outputs({"retry-me"}) == {"retry-me": 1}
    (out,) = await harness.outputs()
    assert out["attempt"] == 2 and out["consumer"] == "c"
    assert await harness.runs("retry-me") == 2


def test_retry_policy_is_the_one_home_of_retry_rules() -> None:
    policy = RetryPolicy.exponential(3, 2.0, handler_timeout=900.0)
    assert policy.delays == (2.0, 4.0, 8.0) and policy.attempts == 4
    assert [policy.delay_before(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, None]
    assert RetryPolicy().max_deliveries == 5 and RetryPolicy().handler_timeout is None
    for bad in ({"delays": (-1.0,)}, {"max_deliveries": 0}, {"handler_timeout": 0.0}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]
