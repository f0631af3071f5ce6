"""The LLM planner adapter: an OpenAI-compatible chat completion that rewrites a plan's words.

The LLM gets the local plan's structure and returns JSON with a style, characters, scene
descriptions and per-clip descriptions; timing and transitions stay those of the local plan.
Failures are translated into :class:`~montage_common.errors.GenerationError` (retryable for 429
and 5xx); the stage falls back to the local plan on any of them.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from montage_common.errors import GenerationError
from montage_common.messages import call_id
from montage_common.models import Character, ClipScript, CostItem, Scene, ScenePlan

from montage_stages.context import StageContext
from montage_stages.costing import usd
from montage_stages.provider_http import post_json

_SYSTEM = (
    "You plan music videos. Answer with one JSON object only: "
    '{"style": str, "characters": [{"id": str, "name": str, "description": str}], '
    '"scenes": [{"id": str, "description": str, "setting": str}], '
    '"clips": [{"index": int, "description": str}]}. Keep the given ids and indexes.'
)


class _Answer(msgspec.Struct, kw_only=True):
    style: str = ""
    characters: list[Character] = []
    scenes: list[dict[str, Any]] = []
    clips: list[dict[str, Any]] = []


async def enrich(ctx: StageContext, job_id: str, prompt: str, plan: ScenePlan) -> ScenePlan:
    s = ctx.settings
    skeleton = {
        "prompt": prompt,
        "style": plan.style,
        "characters": [msgspec.to_builtins(c) for c in plan.characters],
        "scenes": [{"id": sc.id, "description": sc.description, "setting": sc.setting} for sc in plan.scenes],
        "clips": [
            {"index": c.index, "scene_id": c.scene_id, "start": c.start, "end": c.end} for c in plan.clip_scripts
        ],
    }
    body = {
        "model": s.llm_model,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": json.dumps(skeleton)}],
    }
    url = s.llm_url.rstrip("/") + "/chat/completions"
    data = await post_json("LLM provider", url, body, api_key=s.llm_api_key, limit_seconds=s.llm_timeout_seconds)
    try:
        tokens = int(data.get("usage", {}).get("total_tokens", 0))
        answer = msgspec.json.decode(data["choices"][0]["message"]["content"], type=_Answer)
    except (KeyError, IndexError, TypeError, ValueError, msgspec.DecodeError) as exc:
        raise GenerationError(f"LLM answer unusable: {exc}") from None
    await ctx.cost(
        CostItem(
            call_id=call_id(job_id, "scene_planner", "llm"),
            api_name=f"llm:{s.llm_model}",
            amount=usd(tokens / 1000 * s.llm_usd_per_1k_tokens),
        )
    )
    return _merge(plan, answer)


def _merge(plan: ScenePlan, answer: _Answer) -> ScenePlan:
    scenes = {d.get("id"): d for d in answer.scenes if isinstance(d, dict)}
    clips = {d.get("index"): d for d in answer.clips if isinstance(d, dict)}
    new_scenes = [
        Scene(
            id=sc.id,
            palette=sc.palette,
            description=str(scenes.get(sc.id, {}).get("description") or sc.description),
            setting=str(scenes.get(sc.id, {}).get("setting") or sc.setting),
        )
        for sc in plan.scenes
    ]
    new_clips = [
        msgspec.structs.replace(c, description=str(clips.get(c.index, {}).get("description") or c.description))
        for c in plan.clip_scripts
    ]
    known = {c.id for c in plan.characters}
    chars = [c for c in answer.characters if c.id in known] or plan.characters
    chars_list: list[Character] = chars
    clip_list: list[ClipScript] = new_clips
    return msgspec.structs.replace(
        plan,
        style=answer.style or plan.style,
        characters=chars_list,
        scenes=new_scenes,
        clip_scripts=clip_list,
        planner="llm",
    )
