"""The text seam: one OpenAI chat completion with structured JSON output (``response_format``
``json_schema``, strict), priced from the answer's ``usage``.

Any server speaking the chat-completions protocol works by base URL (``LLM_URL``): OpenAI, Azure
OpenAI's v1 endpoint, vLLM, Ollama, LiteLLM. The scene planner (:mod:`llm_planner`) and the prompt
writer (:mod:`prompt_writer`) are its users. The cost of a call is recorded as soon as its usage is
known, under the call id the caller gives (stable under retries), even when the answer turns out
unusable: the provider billed it.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from montage_contracts.errors import GenerationError
from montage_contracts.messages import request_call_id
from montage_contracts.models import CostItem

from montage_stages.providers.costing import llm_reserve_usd, llm_usd
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import (
    ContentRefused,
    ProviderUnavailable,
    client_request_id,
    failed,
    request_id_of,
)

PROVIDER = "openai-chat"  # its name in the shared limits and readiness (provider_check.stage_provider)
WHAT = "text provider"


def strict_object(properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema object in the form strict structured output requires (all fields required)."""
    return {"type": "object", "additionalProperties": False, "required": list(properties), "properties": properties}


async def complete_json(
    ctx: StageContext, *, call: str, name: str, schema: dict[str, Any], system: str, user: str
) -> dict[str, Any]:
    """The JSON object the model answers for ``system`` + ``user``, shaped by ``schema``."""
    s = ctx.settings
    client = ctx.providers.openai(s.llm_url, s.llm_api_key, s.llm_timeout_seconds)
    price = llm_reserve_usd(s, s.llm_model, len(system) + len(user) + len(json.dumps(schema)))
    async with ctx.budget.reserved(call, price):  # BudgetExceededError: the call is not made
        sent = client_request_id()
        try:
            await ctx.providers.limits.before_call(PROVIDER)  # a 429 any worker got: wait it out
            completion = await client.chat.completions.create(
                extra_headers={"X-Client-Request-Id": sent},
                model=s.llm_model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": name, "strict": True, "schema": schema},
                },
            )
        except (openai.OpenAIError, ValueError) as exc:
            raise await failed(ctx.providers.limits, PROVIDER, WHAT, exc) from None
        await ctx.providers.limits.report(PROVIDER, True)
        usage = completion.usage
        if usage is not None:
            amount = llm_usd(s, s.llm_model, usage.prompt_tokens, usage.completion_tokens)
            # one row per billed request: a stage retried after it was billed records its new request too
            billed = request_call_id(call, request_id_of(completion, sent))
            await ctx.cost(CostItem(call_id=billed, api_name=f"llm:{s.llm_model}", amount=amount))
    if not completion.choices:
        raise ProviderUnavailable(f"{WHAT} answered without a choice")
    choice = completion.choices[0]
    if choice.message.refusal:
        raise ContentRefused(f"{WHAT} refused the request: {choice.message.refusal[:200]}")
    if choice.finish_reason == "content_filter":
        raise ContentRefused(f"{WHAT} refused the request (content filter)")
    if choice.finish_reason == "length":
        raise GenerationError(f"{WHAT} answer was cut off (length)")
    try:
        answer = json.loads(choice.message.content or "")
    except ValueError:
        raise GenerationError(f"{WHAT} answered with invalid JSON") from None
    if not isinstance(answer, dict):
        raise GenerationError(f"{WHAT} answered {type(answer).__name__}, not a JSON object")
    return answer
