"""The LLM scene planner: the text seam rewrites a local plan's words.

The model gets the local plan's structure (scenes, characters, clips with their times and the
lyrics sung in them) and answers, in a strict JSON schema, a style, the characters, scene
descriptions and one description per clip; timing and transitions stay those of the local plan.
Failures propagate (:mod:`text_provider`): retryable ones are retried by the runtime, and after the
last retry the orchestrator takes the spec's fallback (a simple plan).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from montage_contracts.messages import call_id
from montage_contracts.models import Character, Scene, ScenePlan

from montage_stages.providers.text_provider import complete_json, strict_object
from montage_stages.runtime.context import StageContext

_SYSTEM = (
    "You plan music videos. You get a plan's structure as JSON: the user's prompt, a style, characters,"
    " scenes and beat-aligned clips (with the lyrics sung in each, when known). Rewrite the style, the"
    " characters, every scene's description and setting, and every clip's description so they tell one"
    " visual story that fits the prompt, the music and the lyrics. Keep every id and index."
)
_TEXT = {"type": "string"}
SCHEMA = strict_object(
    {
        "style": _TEXT,
        "characters": {
            "type": "array",
            "items": strict_object({"id": _TEXT, "name": _TEXT, "description": _TEXT}),
        },
        "scenes": {"type": "array", "items": strict_object({"id": _TEXT, "description": _TEXT, "setting": _TEXT})},
        "clips": {"type": "array", "items": strict_object({"index": {"type": "integer"}, "description": _TEXT})},
    }
)


def skeleton(prompt: str, plan: ScenePlan, lyrics: dict[int, str]) -> dict[str, Any]:
    """What the model is shown: the plan without palettes and transitions."""
    return {
        "prompt": prompt,
        "style": plan.style,
        "characters": [msgspec.to_builtins(c) for c in plan.characters],
        "scenes": [{"id": sc.id, "description": sc.description, "setting": sc.setting} for sc in plan.scenes],
        "clips": [
            {
                "index": c.index,
                "scene_id": c.scene_id,
                "start": c.start,
                "end": c.end,
                "description": c.description,
                "lyrics": lyrics.get(c.index, ""),
            }
            for c in plan.clip_scripts
        ],
    }


async def enrich(
    ctx: StageContext, job_id: str, prompt: str, plan: ScenePlan, lyrics: dict[int, str] | None = None
) -> ScenePlan:
    """``plan`` with the model's words (cost: ``{job_id}:scene_planner:llm``)."""
    answer = await complete_json(
        ctx,
        call=call_id(job_id, "scene_planner", "llm"),
        name="scene_plan",
        schema=SCHEMA,
        system=_SYSTEM,
        user=json.dumps(skeleton(prompt, plan, lyrics or {})),
    )
    return merge(plan, answer)


def _by(items: object, key: str) -> dict[Any, dict[str, Any]]:
    return {d.get(key): d for d in items if isinstance(d, dict)} if isinstance(items, list) else {}


def merge(plan: ScenePlan, answer: dict[str, Any]) -> ScenePlan:
    """The model's words over ``plan``; anything missing or unknown keeps the plan's own."""
    scenes, clips, chars = (
        _by(answer.get("scenes"), "id"),
        _by(answer.get("clips"), "index"),
        _by(answer.get("characters"), "id"),
    )
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
    new_chars = [
        Character(
            id=c.id,
            name=str(chars.get(c.id, {}).get("name") or c.name),
            description=str(chars.get(c.id, {}).get("description") or c.description),
        )
        for c in plan.characters
    ]
    style = answer.get("style")
    return msgspec.structs.replace(
        plan,
        style=style if isinstance(style, str) and style.strip() else plan.style,
        characters=new_chars,
        scenes=new_scenes,
        clip_scripts=new_clips,
        planner="llm",
    )
