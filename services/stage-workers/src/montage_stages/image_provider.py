"""The image-provider adapter: an OpenAI-compatible ``/images/generations`` endpoint returning PNGs.

Failures are translated into :class:`~montage_common.errors.GenerationError` (retryable for 429
and 5xx); the reference stage lets them propagate so the orchestrator applies its fallback.
"""

from __future__ import annotations

import base64
import binascii

from montage_common.errors import GenerationError
from montage_common.models import CostItem

from montage_stages.context import StageContext
from montage_stages.costing import usd
from montage_stages.provider_http import post_json


async def generate_png(ctx: StageContext, call_id: str, prompt: str, width: int, height: int) -> bytes:
    s = ctx.settings
    url = s.image_provider_url.rstrip("/") + "/images/generations"
    body = {
        "model": s.image_provider_model,
        "prompt": prompt,
        "size": f"{width}x{height}",
        "response_format": "b64_json",
        "n": 1,
    }
    data = await post_json("image provider", url, body, api_key=s.image_provider_api_key, limit_seconds=120)
    try:
        png = base64.b64decode(data["data"][0]["b64_json"])
    except (KeyError, IndexError, TypeError, binascii.Error) as exc:
        raise GenerationError(f"image provider answer unusable: {exc}") from None
    if not png.startswith(b"\x89PNG"):
        raise GenerationError("image provider did not return a PNG")
    await ctx.cost(
        CostItem(call_id=call_id, api_name=f"image:{s.image_provider_model}", amount=usd(s.image_usd_per_image))
    )
    return png
