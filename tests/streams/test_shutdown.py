"""SIGTERM with work in flight: finished work acked, unfinished work reclaimed, nothing twice."""

from __future__ import annotations

import signal

from tests.streams.conftest import Harness, wait_until


async def test_sigterm_acks_finished_and_leaves_unfinished_for_another(harness: Harness) -> None:
    await harness.spawn("a", "--grace", "1.5", "--concurrency", "3")
    await harness.produce("short1", sleep=0.5)
    await harness.produce("short2", sleep=0.5)
    await harness.produce("long", sleep=60, sleep_runs=1)

    async def all_started() -> bool:
        return {r["mid"] for r in await harness.log()} == {"short1", "short2", "long"}

    await wait_until(all_started, "three handlers in flight")
    harness.signal("a", signal.SIGTERM)
    await wait_until(lambda: harness.redis.exists(harness.key("stopping", "a")), "a to get SIGTERM")
    await harness.produce("late")  # a stopped reading: it must not take this one
    assert await harness.wait_exit("a") == 0

    counts = await harness.out_counts()
    assert counts == {"short1": 1, "short2": 1}  # finished within the grace and acked
    assert await harness.pending() == 1  # the cancelled one stays pending

    await harness.spawn("b")
    counts = await harness.wait_outputs({"short1", "short2", "long", "late"})
    assert counts == {"short1": 1, "short2": 1, "long": 1, "late": 1}
    done = {o["mid"]: o["consumer"] for o in await harness.outputs()}
    assert done == {"short1": "a", "short2": "a", "long": "b", "late": "b"}
    assert [await harness.runs(m) for m in ("short1", "short2", "long", "late")] == [1, 1, 2, 1]
    assert await harness.pending() == 0


async def test_sigterm_with_every_slot_busy_ends_after_the_grace(harness: Harness) -> None:
    await harness.spawn("a", "--grace", "0.5", "--concurrency", "1")
    await harness.produce("long", sleep=60, sleep_runs=1)
    await wait_until(lambda: harness.runs("long"), "the handler to start")
    harness.signal("a", signal.SIGTERM)
    assert await harness.wait_exit("a") == 0  # did not wait for the 60 s handler
    assert await harness.out_counts() == {}
    await harness.spawn("b")
    assert await harness.wait_outputs({"long"}) == {"long": 1}
