"""The clip seam: RAGNAROK through the real ragnarok-proxy (in-process, real Postgres and Redis)
and the fake RAGNAROK: the Nexus fields sent, the job visible under the same trace id, RAGNAROK's
cost_usd, and every failure passed through the proxy and translated."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from montage_common.storage import LocalStorage
from montage_contracts.errors import GenerationError
from montage_contracts.models import ClipPrompt, ClipPrompts, VideoGeneratorInput
from montage_stages.media.clip_encoder import VideoSource
from montage_stages.providers.renderers import RagnarokRenderer
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import Providers, ProviderUnavailable
from montage_stages.runtime.settings import StageSettings
from montage_stages.stages import video_generator

from tests.providers.conftest import Costs
from tests.ragnarok.conftest import SECRET, Served, headers

USER = "clip-owner"


@pytest.fixture
def make_clip_ctx(
    proxy: str, fake_ragnarok: Served, costs: Costs, providers: Providers, storage: LocalStorage, tmp_path: Path
) -> Callable[..., StageContext]:
    fake_ragnarok.state.serve_videos = True

    def make(**overrides: Any) -> StageContext:
        settings = StageSettings(
            **{
                "video_width": 160,
                "video_height": 90,
                "video_fps": 12,
                "x264_preset": "ultrafast",
                "video_provider": "ragnarok",
                "ragnarok_proxy_url": proxy,
                "internal_secret": SECRET,
                "ragnarok_poll_seconds": 0.1,
                "ragnarok_clip_timeout_seconds": 30.0,
                "ragnarok_request_timeout_seconds": 5.0,
                **overrides,
            }
        )
        return StageContext.create(
            "job1", storage, settings=settings, workdir=tmp_path / "work", cost=costs, providers=providers, user_id=USER
        )

    return make


def _prompt(index: int = 2, start: float = 6.0, end: float = 9.5, keys: list[str] | None = None) -> ClipPrompt:
    return ClipPrompt(
        index=index,
        prompt=f"A dancer under neon signs, shot {index}",
        start=start,
        end=end,
        scene_id="scene_1",
        negative_prompt="blurry",
        reference_keys=keys or [],
        motion="zoom_in",
    )


async def _nexus_job(proxy: str, job_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proxy}/api/nexus/ragnarok/jobs/{job_id}", headers=headers(USER)) as r,
    ):
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def test_a_clip_through_the_proxy(
    make_clip_ctx: Callable[..., StageContext], proxy: str, fake_ragnarok: Served, costs: Costs, tmp_path: Path
) -> None:
    ctx = make_clip_ctx()
    await ctx.storage.put_bytes("reference-images/job1/scene_scene_1.png", b"\x89PNG fake", "image/png")
    dest = tmp_path / "clip_2.mp4"
    source = await RagnarokRenderer().render(
        ctx, "job1", _prompt(keys=["reference-images/job1/scene_scene_1.png"]), dest
    )
    assert isinstance(source, VideoSource) and source.seconds == 3.5
    assert dest.read_bytes()[4:8] == b"ftyp"  # the MP4 RAGNAROK rendered, downloaded
    # what RAGNAROK received: the renderer's fields, forwarded by the proxy as they are
    [submitted] = fake_ragnarok.state.stats()["submitted"]
    body = submitted["body"]
    assert body["business_name"] == "Montage"
    assert body["client_reference"] == source.provider_job_id
    assert body["prompt"] == "A dancer under neon signs, shot 2" and body["negative_prompt"] == "blurry"
    assert body["duration_seconds"] == 5  # RAGNAROK's minimum; a 3.5 s clip uses the first 3.5 s
    assert (body["width"], body["height"], body["fps"]) == (160, 90, 12)
    assert body["montage_job_id"] == "job1" and body["montage_clip_index"] == 2
    [ref] = body["reference_images"]
    assert "/files/reference-images/job1/scene_scene_1.png?" in ref and "sig=" in ref
    # one trace id: the Nexus job (the user's, at the proxy), RAGNAROK's calls, and the clip
    job = await _nexus_job(proxy, source.provider_job_id)
    assert job["status"] == "completed" and job["trace_id"] == source.trace_id == submitted["trace_id"]
    assert source.trace_id.startswith("nxs_")
    # the cost is RAGNAROK's own figure
    assert [(c.call_id, c.api_name, c.amount) for c in costs] == [
        (f"job1:video_generator:ragnarok_2@{source.provider_job_id}", "ragnarok", Decimal("2.640000"))
    ]


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("503", ProviderUnavailable, "answered 503 SERVICE_UNAVAILABLE"),
        ("429", ProviderUnavailable, "answered 429 RATE_LIMIT_EXCEEDED"),
        ("500", ProviderUnavailable, "answered 502 UPSTREAM_ERROR"),
        ("malformed", ProviderUnavailable, "answered 502 UPSTREAM_ERROR"),
        ("refuse", GenerationError, "answered 400 VALIDATION_ERROR: Request rejected by the content policy"),
        ("hang", ProviderUnavailable, "answered 504 TIMEOUT"),
    ],
)
async def test_failures_pass_through_the_proxy(
    make_clip_ctx: Callable[..., StageContext],
    fake_ragnarok: Served,
    costs: Costs,
    tmp_path: Path,
    mode: str,
    error: type,
    text: str,
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{fake_ragnarok.url}/_control", json={"mode": mode, "hang_seconds": 5}) as r,
    ):
        assert r.status == 200
    with pytest.raises(GenerationError) as caught:
        await RagnarokRenderer().render(make_clip_ctx(), "job1", _prompt(), tmp_path / "c.mp4")
    assert caught.type is error and text in caught.value.message, caught.value.message
    assert caught.value.retryable is (error is ProviderUnavailable)
    assert costs == []


async def test_a_failed_workflow_and_a_slow_one(
    make_clip_ctx: Callable[..., StageContext], fake_ragnarok: Served, tmp_path: Path
) -> None:
    fake_ragnarok.state.fail_workflows = True
    with pytest.raises(GenerationError, match="failed: Render failed") as caught:
        await RagnarokRenderer().render(make_clip_ctx(), "job1", _prompt(), tmp_path / "c.mp4")
    assert not caught.value.retryable
    fake_ragnarok.state.fail_workflows = False
    fake_ragnarok.state.step_seconds = 60
    with pytest.raises(ProviderUnavailable, match=r"not finished after 0\.5 s"):
        await RagnarokRenderer().render(
            make_clip_ctx(ragnarok_clip_timeout_seconds=0.5), "job1", _prompt(), tmp_path / "d.mp4"
        )


def _prompts(n: int) -> VideoGeneratorInput:
    return VideoGeneratorInput(clip_prompts=ClipPrompts(clips=[_prompt(i, 3.0 * i, 3.0 * (i + 1)) for i in range(n)]))


async def test_video_generator_renders_ragnarok_clips(
    make_clip_ctx: Callable[..., StageContext], proxy: str, costs: Costs
) -> None:
    clips = await video_generator.process(make_clip_ctx(), "job1", _prompts(3))
    assert [c.provider for c in clips.clips] == ["ragnarok"] * 3 and not clips.failed
    for clip in clips.clips:
        job = await _nexus_job(proxy, clip.provider_job_id)
        assert job["trace_id"] == clip.trace_id
    assert sorted(c.call_id.split("@")[0] for c in costs if c.api_name == "ragnarok") == [
        f"job1:video_generator:ragnarok_{i}" for i in range(3)
    ]


async def test_video_generator_with_the_provider_down(
    make_clip_ctx: Callable[..., StageContext], fake_ragnarok: Served
) -> None:
    """Fewer clips than the minimum because RAGNAROK is down: a retryable GENERATION_ERROR for the
    runtime to retry; clips it refused are counted against the minimum (the orchestrator's rule)."""
    fake_ragnarok.state.mode = "503"
    with pytest.raises(ProviderUnavailable, match=r"Insufficient clips generated \(0 of 4\)") as caught:
        await video_generator.process(make_clip_ctx(), "job1", _prompts(4))
    assert caught.value.code == "GENERATION_ERROR" and caught.value.retryable
    fake_ragnarok.state.mode = "refuse"
    refused = await video_generator.process(make_clip_ctx(), "job1", _prompts(4))
    assert refused.clips == [] and len(refused.failed) == 4
    assert all("content policy" in f.error for f in refused.failed)


async def test_enough_clips_despite_one_failure(
    make_clip_ctx: Callable[..., StageContext],
    fake_ragnarok: Served,
) -> None:
    """A failed clip is counted against the >= 3 rule, not raised, when enough others rendered."""
    calls = {"n": 0}
    real = RagnarokRenderer()

    class OneFails:
        name = "ragnarok"

        async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Any:
            calls["n"] += 1
            if prompt.index == 1:
                raise ProviderUnavailable("RAGNAROK answered 503")
            return await real.render(ctx, job_id, prompt, dest)

    clips = await video_generator.process(make_clip_ctx(), "job1", _prompts(4), renderer=OneFails())
    assert [c.index for c in clips.clips] == [0, 2, 3] and [f.index for f in clips.failed] == [1]
