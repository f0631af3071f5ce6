"""The reference-still seam (images protocol, base64 PNGs) against the OpenAI fake."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from montage_contracts.errors import GenerationError
from montage_contracts.models import ReferenceGeneratorInput
from montage_stages.providers import image_provider
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import ContentRefused, ProviderUnavailable
from montage_stages.stages import reference_generator, scene_planner

from tests.providers.conftest import Costs, Fake
from tests.providers.test_text import _audio


async def test_request_shape_png_and_cost(make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs) -> None:
    ctx = make_ctx(image_provider_model="gpt-image-2", image_provider_quality="low", image_provider_size="256x144")
    png, width, height = await image_provider.generate_png(ctx, "job1:reference_generator:scene_scene_1", "a city")
    assert png.startswith(image_provider.PNG_MAGIC) and (width, height) == (256, 144)
    [req] = fake.requests("images")
    assert req["path"] == "/v1/images/generations" and req["authorization"] == "Bearer sk-test"
    # GPT image models always answer base64 and refuse response_format: it is not sent to them
    assert req["body"] == {"model": "gpt-image-2", "prompt": "a city", "size": "256x144", "n": 1, "quality": "low"}
    assert [(c.call_id.split("@")[0], c.api_name, c.amount) for c in costs] == [
        ("job1:reference_generator:scene_scene_1", "image:gpt-image-2", Decimal("0.008000"))
    ]


async def test_other_models_are_asked_for_b64_json(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs
) -> None:
    ctx = make_ctx(image_provider_model="flux-dev", image_provider_quality="", image_prices="flux-dev=0.025")
    await image_provider.generate_png(ctx, "c", "a city")
    assert fake.requests("images")[-1]["body"] == {
        "model": "flux-dev",
        "prompt": "a city",
        "size": "256x144",
        "n": 1,
        "response_format": "b64_json",
    }
    assert costs[-1].amount == Decimal("0.025000")


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("429", ProviderUnavailable, "answered 429 (Retry-After 1 s)"),
        ("500", ProviderUnavailable, "answered 500"),
        ("malformed", ProviderUnavailable, "unusable body"),
        ("refuse", ContentRefused, "content policy"),
    ],
)
async def test_failures(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs, mode: str, error: type, text: str
) -> None:
    await fake.control(mode=mode, endpoints=["images"])
    with pytest.raises(GenerationError) as caught:
        await image_provider.generate_png(make_ctx(), "c", "a city")
    assert caught.type is error and text in caught.value.message
    assert caught.value.retryable is (error is ProviderUnavailable)
    assert costs == []  # no image came back: nothing billed


async def test_hang_past_the_timeout(make_ctx: Callable[..., StageContext], fake: Fake) -> None:
    await fake.control(mode="hang", endpoints=["images"], hang_seconds=30)
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await image_provider.generate_png(make_ctx(image_timeout_seconds=0.5), "c", "a city")


async def test_reference_generator_draws_every_still_with_the_provider(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs
) -> None:
    plan = scene_planner.local_plan("A lone dancer in a neon city at night", _audio())
    ctx = make_ctx()
    refs = await reference_generator.process(ctx, "job1", ReferenceGeneratorInput(plan=plan))
    stills = [*refs.scene_references, *refs.character_references]
    assert len(fake.requests("images")) == len(stills) == len(plan.scenes) + len(plan.characters)
    assert all((r.width, r.height) == (256, 144) for r in stills)
    for r in stills:
        local = await ctx.storage.get_file(r.key, ctx.workdir / "check.png")
        assert local.read_bytes().startswith(image_provider.PNG_MAGIC)
    image_calls = sorted(c.call_id.split("@")[0] for c in costs if c.api_name.startswith("image:"))
    assert image_calls == sorted(
        [f"job1:reference_generator:scene_{s.id}" for s in plan.scenes]
        + [f"job1:reference_generator:character_{c.id}" for c in plan.characters]
    )


async def test_a_refused_still_fails_the_stage(make_ctx: Callable[..., StageContext], fake: Fake) -> None:
    """The orchestrator then continues text-only (the spec's fallback), without retrying a refusal."""
    await fake.control(mode="refuse", endpoints=["images"], times=1)
    plan = scene_planner.local_plan("A lone dancer in a neon city at night", _audio())
    with pytest.raises(GenerationError) as caught:
        await reference_generator.process(make_ctx(), "job1", ReferenceGeneratorInput(plan=plan))
    assert not caught.value.retryable
