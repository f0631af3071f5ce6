"""Stage 4, prompt_generator: one generation prompt per clip.

``async def process(ctx, job_id, input: PromptGeneratorInput) -> ClipPrompts``

Each prompt combines the plan's style, the clip's description, its scene's setting and palette,
its characters and camera motion, and carries the storage keys of its reference stills (scene
first, then characters). With ``input.references is None`` or ``input.fallback_mode`` the prompts
are text-only (no reference keys) and ``ClipPrompts.text_only`` is set. With ``settings.llm_url``
the text provider then rewrites every prompt (:mod:`prompt_writer`); its failures propagate.
"""

from __future__ import annotations

import structlog
from montage_contracts.models import ClipPrompt, ClipPrompts, PromptGeneratorInput

from montage_stages.providers import prompt_writer
from montage_stages.providers.costing import ComputeMeter
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.metrics import track_stage

STAGE = "prompt_generator"
NEGATIVE = "blurry, distorted faces, text, watermark, low quality, flicker"
_CAMERA = {
    "zoom_in": "slow push-in",
    "zoom_out": "slow pull-back",
    "pan_left": "lateral pan to the left",
    "pan_right": "lateral pan to the right",
    "pulse": "camera pulsing with the beat",
}
log = structlog.get_logger()


async def process(ctx: StageContext, job_id: str, input: PromptGeneratorInput) -> ClipPrompts:
    async with track_stage(STAGE):
        await ctx.check_cancelled()
        meter = ComputeMeter(ctx, job_id, STAGE)
        with meter:
            result = build(input)
        await meter.report()
        if ctx.settings.llm_url:
            result = await prompt_writer.rewrite(ctx, job_id, input.plan.style, result)
        log.info("prompts_ready", job_id=job_id, clips=len(result.clips), text_only=result.text_only)
        return result


def build(input: PromptGeneratorInput) -> ClipPrompts:
    plan = input.plan
    text_only = input.references is None or input.fallback_mode
    scenes = {s.id: s for s in plan.scenes}
    chars = {c.id: c for c in plan.characters}
    scene_keys: dict[str, str] = {}
    char_keys: dict[str, str] = {}
    if input.references is not None and not text_only:
        scene_keys = {r.id: r.key for r in input.references.scene_references}
        char_keys = {r.id: r.key for r in input.references.character_references}
    prompts = []
    for clip in plan.clip_scripts:
        scene = scenes.get(clip.scene_id)
        cast = [chars[c] for c in clip.character_ids if c in chars]
        parts = [plan.style, clip.description]
        if scene is not None and scene.setting:
            parts.append(f"Setting: {scene.setting}")
        if cast:
            parts.append("Featuring " + "; ".join(f"{c.name}, {c.description}" for c in cast))
        parts.append(f"Camera: {_CAMERA.get(clip.motion, clip.motion)}, accents on the beat")
        if scene is not None and scene.palette:
            parts.append("Colour palette " + ", ".join(scene.palette))
        keys = [scene_keys[clip.scene_id]] if clip.scene_id in scene_keys else []
        keys += [char_keys[c.id] for c in cast if c.id in char_keys]
        prompts.append(
            ClipPrompt(
                index=clip.index,
                prompt=". ".join(parts),
                start=clip.start,
                end=clip.end,
                scene_id=clip.scene_id,
                negative_prompt=NEGATIVE,
                reference_keys=keys,
                motion=clip.motion,
                palette=scene.palette if scene is not None else [],
                beats=clip.beats,
            )
        )
    return ClipPrompts(clips=prompts, text_only=text_only)
