"""The image-to-video seam (``VIDEO_PROVIDER=runway``): the official ``runwayml`` SDK against the
Runway stand-in over real HTTP, with the providers' shared limits on real Redis.

- a clip: the documented request (model, JPEG data URI of the still, prompt text, ratio, duration,
  ``X-Runway-Version`` and the bearer key: the fake refuses anything else), a real MP4 downloaded,
  one cost per task keyed by its task id;
- content moderation (``FAILED``, ``SAFETY.*``): ``ContentRefused``, not retryable;
- a 429 with ``Retry-After``: the shared backoff key is set and no worker calls Runway before it
  expires (the fake records any call inside the window), then every clip completes;
- the semaphore: three "workers" (three ``ProviderLimits`` on one Redis) rendering 6 clips with
  ``runway=2`` never have more than 2 tasks open at the fake; a dead holder's slot frees itself
  when its lease runs out;
- billing: the same clip rendered again (a retried stage) is a second task and a second cost row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from montage_common.storage import LocalStorage, layout
from montage_contracts.keys import Keys
from montage_contracts.models import ClipPrompt
from montage_dev.fakes.runway import FakeRunway, create_app
from montage_stages.media import ffmpeg, imaging
from montage_stages.media.clip_encoder import VideoSource
from montage_stages.providers.image_to_video import RunwayRenderer
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import ContentRefused, Providers
from montage_stages.runtime.provider_limits import ProviderLimits
from montage_stages.runtime.settings import StageSettings
from redis.asyncio import Redis

from tests.providers.conftest import Costs

KEY = "rk-test"


class Runway:
    def __init__(self, server: TestServer, state: FakeRunway) -> None:
        self.server, self.state = server, state
        self.url = str(server.make_url("")).rstrip("/")

    async def control(self, **body: Any) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.url + "/_control", json=body) as r:
            assert r.status == 200, await r.text()


@pytest.fixture
async def runway() -> AsyncIterator[Runway]:
    app, state = create_app(FakeRunway(api_key=KEY, step_seconds=0.15))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Runway(server, state)
    await server.close()


@pytest.fixture
async def still(storage: LocalStorage, tmp_path: Path) -> str:
    png = imaging.png_bytes(imaging.scene_image(["#203040", "#c08040"], "seed", 320, 180))
    key = layout.reference_image("job1", "scene", "scene_1")
    await storage.put_bytes(key, png, "image/png")
    return key


@pytest.fixture
async def worker(
    runway: Runway, redis: Redis, keys: Keys, storage: LocalStorage, costs: Costs, tmp_path: Path
) -> AsyncIterator[Callable[..., StageContext]]:
    """``worker(**settings)``: a stage context of one more "worker process" (its own provider
    clients and its own ProviderLimits on the shared Redis)."""
    made: list[Providers] = []

    def make(limit: int = 2, **overrides: Any) -> StageContext:
        settings = StageSettings(
            video_provider="runway", runway_base_url=runway.url, runway_api_key=KEY, runway_poll_seconds=0.05,
            video_width=320, video_height=180, provider_max_concurrency=f"runway={limit}", **overrides,
        )  # fmt: skip
        providers = Providers(ProviderLimits(redis, keys, settings.provider_limits, lease_seconds=3.0))
        made.append(providers)
        return StageContext.create(
            "job1", storage, settings=settings, workdir=tmp_path / f"w{len(made)}", cost=costs, providers=providers
        )

    yield make
    for providers in made:
        await providers.aclose()


def prompt(index: int, still: str, seconds: float = 4.0) -> ClipPrompt:
    return ClipPrompt(
        index=index, prompt=f"clip {index}: a dancer under neon rain", start=index * seconds,
        end=(index + 1) * seconds, scene_id="scene_1", reference_keys=[still],
    )  # fmt: skip


async def test_a_clip_from_the_sdk_over_http(
    worker: Callable[..., StageContext], runway: Runway, still: str, costs: Costs
) -> None:
    ctx = worker()
    source = await RunwayRenderer().render(ctx, "job1", prompt(0, still), ctx.workdir / "clip_0.mp4")
    assert isinstance(source, VideoSource) and source.seconds == 4.0
    [task] = runway.state.stats()["tasks"]
    assert source.provider_job_id == task["id"]
    assert (task["model"], task["ratio"], task["duration"]) == ("gen4_turbo", "1280:720", 5)
    assert task["promptText"] == "clip 0: a dancer under neon rain" and task["image_bytes"] > 1000
    assert runway.state.rejected == {}  # the bearer key and X-Runway-Version were sent
    seconds = await ffmpeg.media_duration(source.path)
    assert 4.9 <= seconds <= 5.1  # the fake's real MP4 of the requested 5 s
    assert [(c.call_id, c.api_name, c.amount) for c in costs] == [
        (f"job1:video_generator:runway_0@{task['id']}", "runway:gen4_turbo", Decimal("0.250000"))
    ]


async def test_content_moderation_is_not_retryable(
    worker: Callable[..., StageContext], runway: Runway, still: str, costs: Costs
) -> None:
    await runway.control(fail_tasks=1, failure_code="SAFETY.INPUT.TEXT")
    ctx = worker()
    with pytest.raises(ContentRefused) as caught:
        await RunwayRenderer().render(ctx, "job1", prompt(0, still), ctx.workdir / "clip_0.mp4")
    assert caught.value.retryable is False and "SAFETY.INPUT.TEXT" in caught.value.message
    assert [c.amount for c in costs] == [Decimal("0")]  # Runway charged nothing for the failed task


async def test_429_backs_every_worker_off(
    worker: Callable[..., StageContext], runway: Runway, still: str, redis: Redis, keys: Keys
) -> None:
    await runway.control(mode="429", times=1, retry_after=1)
    contexts = [worker(limit=4) for _ in range(3)]
    renders = [
        RunwayRenderer().render(ctx, "job1", prompt(i, still), ctx.workdir / f"clip_{i}.mp4")
        for i, ctx in enumerate(contexts)
    ]
    started = time.time()
    tasks = [asyncio.create_task(r) for r in renders]
    while (backoff := await redis.pttl(keys.provider_backoff("runway"))) <= 0:
        await asyncio.sleep(0.005)
    assert 0 < backoff <= 1000  # the shared key every worker reads
    results = await asyncio.gather(*tasks)
    assert len(results) == 3 and runway.state.creates == 3
    stats = runway.state.stats()
    assert stats["backoff_violations"] == []  # nobody called Runway inside Retry-After
    # the refused clip asked again only once the Retry-After had passed
    assert max(t["created"] for t in stats["tasks"]) >= stats["throttled"][0]["at"] + 1
    assert time.time() - started >= 1


async def test_the_semaphore_caps_tasks_across_workers(
    worker: Callable[..., StageContext], runway: Runway, still: str, redis: Redis, keys: Keys
) -> None:
    contexts = [worker(limit=2) for _ in range(3)]
    renders = [
        RunwayRenderer().render(ctx, "job1", prompt(i, still), ctx.workdir / f"clip_{i}.mp4")
        for i, ctx in enumerate(contexts * 2)
    ]
    assert len(await asyncio.gather(*renders)) == 6
    assert runway.state.creates == 6 and runway.state.max_open == 2
    assert await redis.zcard(keys.provider_slots("runway")) == 0  # every slot given back


async def test_a_dead_holders_slot_frees_after_its_lease(redis: Redis, keys: Keys) -> None:
    limits = ProviderLimits(redis, keys, {"runway": 1}, lease_seconds=1.0)
    now_ms = int(time.time() * 1000)
    await redis.zadd(keys.provider_slots("runway"), {"dead-worker": now_ms + 600})  # never renewed
    started = time.monotonic()
    async with limits.slot("runway"):
        assert await limits.in_flight("runway") == 1
    assert time.monotonic() - started >= 0.4


async def test_a_retried_clip_is_billed_per_task(
    worker: Callable[..., StageContext], runway: Runway, still: str, costs: Costs
) -> None:
    for attempt in range(2):  # the stage ran again (a retry): Runway made and billed a second task
        ctx = worker()
        await RunwayRenderer().render(ctx, "job1", prompt(0, still), ctx.workdir / f"clip_0.{attempt}.mp4")
    ids = [t["id"] for t in runway.state.stats()["tasks"]]
    assert [c.call_id for c in costs] == [f"job1:video_generator:runway_0@{i}" for i in ids]
    assert len(set(ids)) == 2
