"""The reference-still seam: the OpenAI images protocol (``/images/generations``, base64 answers).

One request per still: ``model``, ``prompt``, ``size`` (``IMAGE_PROVIDER_SIZE``), ``n=1``,
``quality`` when set, and ``response_format=b64_json`` for models that still take it (every
server but OpenAI's GPT image models, which always answer base64 and refuse the parameter). The
answer's ``data[0].b64_json`` must be a PNG. Priced per image (``IMAGE_PRICES``), recorded as soon
as the answer arrives. Failures propagate: reference_generator's fallback is text-only prompts.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

import openai
from montage_contracts.errors import GenerationError
from montage_contracts.messages import request_call_id
from montage_contracts.models import CostItem

from montage_stages.providers.costing import image_usd
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import ProviderUnavailable, client_request_id, failed, request_id_of

PROVIDER = "openai-images"  # its name in the shared limits and readiness (provider_check.stage_provider)
WHAT = "image provider"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def always_base64(model: str) -> bool:
    """OpenAI's GPT image models answer base64 only and refuse ``response_format``."""
    return model.startswith(("gpt-image", "chatgpt-image"))


def request(ctx: StageContext, prompt: str) -> dict[str, Any]:
    s = ctx.settings
    body: dict[str, Any] = {"model": s.image_provider_model, "prompt": prompt, "size": s.image_provider_size, "n": 1}
    if s.image_provider_quality:
        body["quality"] = s.image_provider_quality
    if not always_base64(s.image_provider_model):
        body["response_format"] = "b64_json"
    return body


async def generate_png(ctx: StageContext, call_id: str, prompt: str) -> tuple[bytes, int, int]:
    """One still for ``prompt``: the PNG and its width and height."""
    s = ctx.settings
    client = ctx.providers.openai(s.image_provider_url, s.image_provider_api_key, s.image_timeout_seconds)
    async with ctx.budget.reserved(call_id, image_usd(s, s.image_provider_model, 1)):  # n=1
        sent = client_request_id()
        try:
            await ctx.providers.limits.before_call(PROVIDER)  # a 429 any worker got: wait it out
            answer = await client.images.generate(**request(ctx, prompt), extra_headers={"X-Client-Request-Id": sent})
        except (openai.OpenAIError, ValueError) as exc:
            raise await failed(ctx.providers.limits, PROVIDER, WHAT, exc) from None
        await ctx.providers.limits.report(PROVIDER, True)
        images = answer.data or []
        if images:
            amount = image_usd(s, s.image_provider_model, len(images))
            billed = request_call_id(call_id, request_id_of(answer, sent))  # one row per billed request
            await ctx.cost(CostItem(call_id=billed, api_name=f"image:{s.image_provider_model}", amount=amount))
    if not images or not images[0].b64_json:
        raise ProviderUnavailable(f"{WHAT} answered without b64_json")
    try:
        png = base64.b64decode(images[0].b64_json, validate=True)
    except (binascii.Error, ValueError):
        raise ProviderUnavailable(f"{WHAT} answered with invalid base64") from None
    if not png.startswith(PNG_MAGIC) or len(png) < 24:
        raise GenerationError(f"{WHAT} did not return a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return png, int(width), int(height)
