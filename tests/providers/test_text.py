"""The text seam (chat completions, structured JSON output) against the OpenAI fake: the exact
request, cost from the reported usage, and every failure mode translated."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from decimal import Decimal

import pytest
from montage_contracts.errors import ErrorCode, GenerationError
from montage_contracts.keys import Keys
from montage_contracts.models import (
    AudioAnalysis,
    ClipPrompt,
    ClipPrompts,
    LyricLine,
    LyricWord,
    Mood,
    PromptGeneratorInput,
    ScenePlannerInput,
    Section,
)
from montage_stages.providers import llm_planner, text_provider
from montage_stages.providers.text_provider import complete_json, strict_object
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import ContentRefused, Providers, ProviderUnavailable
from montage_stages.runtime.provider_limits import ProviderLimits
from montage_stages.stages import prompt_generator, scene_planner
from redis.asyncio import Redis

from tests.providers.conftest import Costs, Fake

SCHEMA = strict_object({"title": {"type": "string"}, "items": {"type": "array", "items": {"type": "integer"}}})


def _audio(lyrics: list[LyricLine] | None = None) -> AudioAnalysis:
    beats = [round(0.5 * i, 3) for i in range(40)]
    return AudioAnalysis(
        duration=20.0,
        tempo=120.0,
        beat_timestamps=beats,
        downbeats=beats[::4],
        sections=[
            Section(start=0, end=8, label="verse", energy=0.4),
            Section(start=8, end=20, label="chorus", energy=0.8),
        ],
        energy=[0.5] * 200,
        mood=Mood(name="energetic"),
        lyrics=lyrics,
    )


async def test_request_shape_usage_and_cost(make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs) -> None:
    ctx = make_ctx(llm_model="gpt-5.4-mini")
    answer = await complete_json(
        ctx,
        call="job1:scene_planner:llm",
        name="thing",
        schema=SCHEMA,
        system="sys",
        user=json.dumps({"title": "x", "items": [3, 4]}),
    )
    assert answer == {"title": "Cinematic, vivid: x", "items": [3, 4]}
    [req] = fake.requests("chat")
    assert req["path"] == "/v1/chat/completions"
    assert req["authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "gpt-5.4-mini"
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": json.dumps({"title": "x", "items": [3, 4]})},
    ]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "strict": True, "schema": SCHEMA},
    }
    usage = req["usage"]
    [item] = costs
    # one row per billed request: the logical call, then the request's id
    assert item.call_id.startswith("job1:scene_planner:llm@req_") and item.api_name == "llm:gpt-5.4-mini"
    expected = (
        Decimal(usage["prompt_tokens"]) * Decimal("0.75") + Decimal(usage["completion_tokens"]) * Decimal("4.50")
    ) / 10**6
    assert item.amount == expected.quantize(Decimal("0.000001"))


async def test_price_table_from_settings(make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs) -> None:
    await fake.control(usage={"prompt_tokens": 1_000_000, "completion_tokens": 2_000_000})
    ctx = make_ctx(llm_model="house-model", llm_prices="house-model=1.5/2.25")
    await complete_json(ctx, call="c", name="n", schema=SCHEMA, system="s", user="{}")
    assert costs[-1].amount == Decimal("6.000000")  # 1M x 1.5 + 2M x 2.25, per 1M
    ctx = make_ctx(llm_model="self-hosted")  # not in the table: free, and logged
    await complete_json(ctx, call="d", name="n", schema=SCHEMA, system="s", user="{}")
    assert costs[-1].amount == Decimal("0")


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("429", ProviderUnavailable, "answered 429 (Retry-After 7 s)"),
        ("500", ProviderUnavailable, "answered 500"),
        ("malformed", ProviderUnavailable, "unusable body"),
        ("refuse", ContentRefused, "refused"),
    ],
)
async def test_failures(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs, mode: str, error: type, text: str
) -> None:
    await fake.control(mode=mode, endpoints=["chat"], retry_after=7)
    with pytest.raises(GenerationError) as caught:
        await complete_json(make_ctx(), call="c", name="n", schema=SCHEMA, system="s", user="{}")
    assert caught.type is error and text in caught.value.message
    # a refusal is the prompt's fault: the job's failure is not retryable (VALIDATION_ERROR)
    refused = error is ContentRefused
    assert caught.value.code == (ErrorCode.VALIDATION_ERROR if refused else ErrorCode.GENERATION_ERROR)
    assert caught.value.retryable is (error is ProviderUnavailable)
    # a refusal was billed (usage came back); the failures that never answered were not
    assert [c.call_id.split("@")[0] for c in costs] == (["c"] if mode == "refuse" else [])


async def test_hang_past_the_timeout(make_ctx: Callable[..., StageContext], fake: Fake) -> None:
    await fake.control(mode="hang", endpoints=["chat"], hang_seconds=30)
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await complete_json(make_ctx(llm_timeout_seconds=0.5), call="c", name="n", schema=SCHEMA, system="s", user="{}")


async def test_unreachable_and_wrong_key(make_ctx: Callable[..., StageContext]) -> None:
    with pytest.raises(ProviderUnavailable, match="unreachable"):
        await complete_json(
            make_ctx(llm_url="http://127.0.0.1:9/v1"), call="c", name="n", schema=SCHEMA, system="s", user="{}"
        )
    with pytest.raises(GenerationError, match="answered 401") as caught:
        await complete_json(make_ctx(llm_api_key="wrong"), call="c", name="n", schema=SCHEMA, system="s", user="{}")
    assert not caught.value.retryable


async def test_a_counted_failure_then_success(make_ctx: Callable[..., StageContext], fake: Fake) -> None:
    """What the runtime's retries see: the first two attempts fail, the third answers."""
    await fake.control(mode="429", endpoints=["chat"], times=2)
    ctx = make_ctx()
    outcomes = []
    for _ in range(3):
        try:
            await complete_json(ctx, call="c", name="n", schema=SCHEMA, system="s", user="{}")
            outcomes.append("ok")
        except ProviderUnavailable:
            outcomes.append("retry")
    assert outcomes == ["retry", "retry", "ok"]
    assert [r["outcome"] for r in fake.requests("chat")] == ["429", "429", "ok"]


async def test_scene_planner_sends_the_plan_and_its_lyrics(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs
) -> None:
    words = [
        LyricWord(start=1.0, end=1.4, word="neon"),
        LyricWord(start=1.5, end=1.9, word="rain"),
        LyricWord(start=12.0, end=12.4, word="tonight"),
    ]
    audio = _audio(
        [
            LyricLine(start=1.0, end=1.9, text="neon rain", words=words[:2]),
            LyricLine(start=12.0, end=12.4, text="tonight", words=words[2:]),
        ]
    )
    ctx = make_ctx()
    plan = await scene_planner.process(
        ctx, "job1", ScenePlannerInput(user_prompt="A lone dancer in a neon city at night", audio=audio)
    )
    assert plan.planner == "llm"
    [req] = fake.requests("chat")
    body = req["body"]
    assert body["response_format"]["json_schema"]["name"] == "scene_plan"
    assert body["response_format"]["json_schema"]["schema"] == llm_planner.SCHEMA
    sent = json.loads(body["messages"][1]["content"])
    assert sent["prompt"] == "A lone dancer in a neon city at night"
    assert [c["index"] for c in sent["clips"]] == [c.index for c in plan.clip_scripts]
    assert sent["clips"][0]["lyrics"] == "neon rain"
    assert any(c["lyrics"] == "tonight" for c in sent["clips"])
    # the model's words (the fake mirrors what it got) replace the local ones, timing stays local
    assert all(c.description.startswith("Cinematic, vivid:") for c in plan.clip_scripts)
    assert plan.clip_scripts[0].start == 0.0
    assert {c.call_id.split("@")[0] for c in costs} == {"job1:scene_planner:local", "job1:scene_planner:llm"}


async def test_scene_planner_failure_propagates(make_ctx: Callable[..., StageContext], fake: Fake) -> None:
    """The fallback is the orchestrator's (after the retries), not a silent local plan."""
    await fake.control(mode="500", endpoints=["chat"])
    with pytest.raises(ProviderUnavailable):
        await scene_planner.process(make_ctx(), "job1", ScenePlannerInput(user_prompt="x" * 60, audio=_audio()))


async def test_prompt_generator_rewrites_every_prompt(
    make_ctx: Callable[..., StageContext], fake: Fake, costs: Costs
) -> None:
    plan = scene_planner.local_plan("A lone dancer in a neon city at night", _audio())
    ctx = make_ctx()
    out = await prompt_generator.process(
        ctx, "job1", PromptGeneratorInput(plan=plan, references=None, fallback_mode=True)
    )
    local = prompt_generator.build(PromptGeneratorInput(plan=plan, references=None, fallback_mode=True))
    [req] = fake.requests("chat")
    assert req["body"]["response_format"]["json_schema"]["name"] == "clip_prompts"
    sent = json.loads(req["body"]["messages"][1]["content"])
    assert [c["draft"] for c in sent["clips"]] == [p.prompt for p in local.clips]
    assert [p.prompt for p in out.clips] == [f"Cinematic, vivid: {p.prompt[:400]}".strip() for p in local.clips]
    assert [p.index for p in out.clips] == [p.index for p in local.clips] and out.text_only
    assert "job1:prompt_generator:llm" in {c.call_id.split("@")[0] for c in costs}


async def test_a_missing_clip_keeps_its_local_prompt(make_ctx: Callable[..., StageContext]) -> None:
    prompts = ClipPrompts(
        clips=[
            ClipPrompt(index=0, prompt="a", start=0, end=3, scene_id="s"),
            ClipPrompt(index=1, prompt="b", start=3, end=6, scene_id="s"),
        ]
    )
    from montage_stages.providers import prompt_writer

    merged = prompt_writer.merge(prompts, {"prompts": [{"index": 1, "prompt": "B!"}, {"index": 9, "prompt": "x"}]})
    assert [p.prompt for p in merged.clips] == ["a", "B!"]


async def test_a_call_made_again_is_billed_again(make_ctx: Callable[..., StageContext], costs: Costs) -> None:
    """A retried stage makes its chat completion again and the provider bills both: two rows of the
    same logical call, each under its own request id (sent as X-Client-Request-Id, or the answer's
    x-request-id), so the orchestrator records both; a request reported twice has one id."""
    ctx = make_ctx()
    for _ in range(2):
        await complete_json(ctx, call="job1:prompt_generator:llm", name="n", schema=SCHEMA, system="s", user="{}")
    first, second = (c.call_id for c in costs)
    assert first.split("@")[0] == second.split("@")[0] == "job1:prompt_generator:llm"
    assert first != second and all("@req_" in c for c in (first, second))


async def test_a_429_backs_every_worker_off(
    make_ctx: Callable[..., StageContext], fake: Fake, redis: Redis, keys: Keys
) -> None:
    """The provider's 429 sets the shared backoff for its Retry-After: another worker process (its
    own clients and limits on the same Redis) waits it out before calling; the readiness says failing."""
    await fake.control(mode="429", endpoints=["chat"], times=1, retry_after=1)
    workers = [Providers(ProviderLimits(redis, keys)) for _ in range(2)]
    first, second = (dataclasses.replace(make_ctx(), providers=p) for p in workers)
    try:
        with pytest.raises(ProviderUnavailable, match="429"):
            await complete_json(first, call="c", name="n", schema=SCHEMA, system="s", user="{}")
        assert 0 < await redis.pttl(keys.provider_backoff(text_provider.PROVIDER)) <= 1000
        status = await redis.hgetall(keys.provider_status())
        assert b"openai-chat.last_failure" in status
        await complete_json(second, call="c", name="n", schema=SCHEMA, system="s", user="{}")
    finally:
        for p in workers:
            await p.aclose()
    refused, answered = fake.requests("chat")
    assert answered["at"] - refused["at"] >= 0.9  # the other worker waited for the Retry-After
    assert b"openai-chat.last_success" in await redis.hgetall(keys.provider_status())
