"""``/healthz`` follows the process's work (``montage_common.liveness``): a loop that stopped
turning, though the process still answers HTTP, makes the liveness probe fail with what is late."""

from __future__ import annotations

import asyncio
import time

from aiohttp import ClientSession, web
from montage_common import web as common_web
from montage_common.liveness import WATCHDOG, Watchdog


async def test_healthz_fails_while_a_watched_loop_is_late_and_recovers() -> None:
    app = common_web.create_base_app("test")
    dog = Watchdog(loop_bound_seconds=5.0)
    turned = {"at": time.monotonic()}
    dog.watch("claims", lambda: turned["at"], 2.0)
    dog.watch("idle", lambda: None, 1.0)  # nothing to report: never late
    app[WATCHDOG] = dog
    stop = asyncio.Event()
    ticking = asyncio.create_task(dog.run(stop))
    ops = web.AppRunner(common_web.create_ops_app(app))
    await ops.setup()
    await web.TCPSite(ops, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{ops.addresses[0][1]}/healthz"
    try:
        async with ClientSession() as session:
            async with session.get(url) as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            turned["at"] = time.monotonic() - 3.0  # the claims loop last turned 3 s ago
            async with session.get(url) as r:
                body = await r.json()
                assert r.status == 503 and body["status"] == "unhealthy"
                assert [p.split(":")[0] for p in body["problems"]] == ["claims"]
            turned["at"] = time.monotonic()
            async with session.get(url) as r:
                assert r.status == 200
    finally:
        stop.set()
        await asyncio.wait_for(ticking, 5)
        await ops.cleanup()


def test_an_event_loop_that_stopped_turning_is_reported() -> None:
    dog = Watchdog(loop_bound_seconds=10.0)
    assert dog.problems(now=dog.loop_at + 5) == []
    assert dog.problems(now=dog.loop_at + 11)[0].startswith("event_loop: no turn for 11")
