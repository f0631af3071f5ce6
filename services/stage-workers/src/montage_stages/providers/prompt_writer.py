"""The LLM prompt writer: the text seam turns each clip's assembled prompt into a video prompt.

prompt_generator builds every clip's prompt locally (style, description, setting, cast, camera,
palette); with ``LLM_URL`` set, one chat completion rewrites them all in a strict JSON schema
(``{"prompts": [{"index", "prompt"}]}``). A clip the model leaves out or answers empty keeps
its local prompt. Failures propagate (:mod:`text_provider`): prompt_generator has no fallback, so
a text provider that stays down fails the job with ``GENERATION_ERROR``.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from montage_contracts.messages import call_id
from montage_contracts.models import ClipPrompts

from montage_stages.providers.text_provider import complete_json, strict_object
from montage_stages.runtime.context import StageContext

_SYSTEM = (
    "You write prompts for a text-to-video model, one per clip of a music video. Each clip comes with"
    " a draft prompt naming its style, action, setting, characters, camera motion and palette. Answer"
    " one vivid, concrete prompt per clip (at most 80 words, present tense, no on-screen text) that keeps"
    " the draft's characters, camera motion and palette consistent across clips. Keep every index."
)
SCHEMA = strict_object(
    {
        "prompts": {
            "type": "array",
            "items": strict_object({"index": {"type": "integer"}, "prompt": {"type": "string"}}),
        }
    }
)


async def rewrite(ctx: StageContext, job_id: str, style: str, prompts: ClipPrompts) -> ClipPrompts:
    """``prompts`` with the model's text (cost: ``{job_id}:prompt_generator:llm``)."""
    user = {
        "style": style,
        "clips": [{"index": p.index, "seconds": round(p.end - p.start, 2), "draft": p.prompt} for p in prompts.clips],
    }
    answer = await complete_json(
        ctx,
        call=call_id(job_id, "prompt_generator", "llm"),
        name="clip_prompts",
        schema=SCHEMA,
        system=_SYSTEM,
        user=json.dumps(user),
    )
    return merge(prompts, answer)


def merge(prompts: ClipPrompts, answer: dict[str, Any]) -> ClipPrompts:
    """The model's prompts over ``prompts``; a clip left out or answered empty keeps its own."""
    items = answer.get("prompts")
    written = {
        d.get("index"): str(d.get("prompt") or "").strip()
        for d in (items if isinstance(items, list) else [])
        if isinstance(d, dict)
    }
    return msgspec.structs.replace(
        prompts,
        clips=[msgspec.structs.replace(p, prompt=written.get(p.index) or p.prompt) for p in prompts.clips],
    )
