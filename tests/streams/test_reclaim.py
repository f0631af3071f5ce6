"""Claims: dead consumers' entries are reclaimed, live consumers' long entries are not."""

from __future__ import annotations

import signal

from tests.streams.conftest import Harness, wait_until


async def test_sigkilled_consumer_entry_completed_by_another_exactly_once(harness: Harness) -> None:
    await harness.spawn("a")
    await harness.spawn("b")
    await harness.produce("before")
    await harness.produce("stuck", sleep=60, sleep_runs=1)  # only its first run hangs
    await harness.wait_outputs({"before"})

    async def first_run() -> list[dict[str, object]]:
        return [r for r in await harness.log() if r["mid"] == "stuck"]

    victim = str((await wait_until(first_run, "the stuck entry to start"))[0]["consumer"])
    survivor = "b" if victim == "a" else "a"
    harness.signal(victim, signal.SIGKILL)
    await harness.produce("after")

    counts = await harness.wait_outputs({"before", "stuck", "after"})
    assert counts == {"before": 1, "stuck": 1, "after": 1}
    done = {o["mid"]: o for o in await harness.outputs()}
    assert done["stuck"]["consumer"] == survivor
    assert int(done["stuck"]["deliveries"]) >= 2
    assert await harness.runs("stuck") == 2
    await wait_until(lambda: _no_pending(harness), "nothing pending")


async def test_long_handler_of_live_worker_is_not_reclaimed(harness: Harness) -> None:
    # claim idle 500 ms; the handler runs 2.5 s (5x) while another consumer reclaims every 250 ms
    await harness.spawn("a", "--claim-idle-ms", "500")
    await harness.spawn("b", "--claim-idle-ms", "500")
    await harness.produce("long", sleep=2.5)
    counts = await harness.wait_outputs({"long"})
    assert counts == {"long": 1}
    assert await harness.runs("long") == 1
    (out,) = await harness.outputs()
    assert out["deliveries"] == 1
    assert [r["consumer"] for r in await harness.log()] == [out["consumer"]]


async def _no_pending(harness: Harness) -> bool:
    return await harness.pending() == 0
