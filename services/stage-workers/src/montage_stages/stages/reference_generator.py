"""Stage 3, reference_generator: one reference still per scene and per character.

``async def process(ctx, job_id, input: ReferenceGeneratorInput) -> ReferenceImages``

Locally each still is a palette composition (a landscape per scene, a silhouette per character)
at twice the video size, so later zooms stay sharp; with ``settings.image_provider_url`` an image
model draws them instead (:mod:`image_provider`, cost ``{job_id}:reference_generator:<kind>_<id>``). Stored at ``reference-images/{job_id}/scene_<id>.png`` and
``character_<id>.png``. Failures propagate: retryable ones are retried by the runtime; after the last retry (or at once for
a refusal) the orchestrator continues text-only, as the spec's fallback says.
"""

from __future__ import annotations

import asyncio

import structlog
from montage_common.storage import layout
from montage_contracts.messages import call_id
from montage_contracts.models import ReferenceGeneratorInput, ReferenceImage, ReferenceImages

from montage_stages.media import imaging
from montage_stages.providers import image_provider
from montage_stages.providers.costing import ComputeMeter
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.metrics import track_stage

STAGE = "reference_generator"
log = structlog.get_logger()


def reference_key(job_id: str, kind: str, ref_id: str) -> str:
    return layout.reference_image(job_id, kind, ref_id)


async def process(ctx: StageContext, job_id: str, input: ReferenceGeneratorInput) -> ReferenceImages:
    async with track_stage(STAGE):
        await ctx.check_cancelled()
        plan = input.plan
        width, height = ctx.settings.frame_size
        w, h = 2 * width, 2 * height
        meter = ComputeMeter(ctx, job_id, STAGE)
        scenes: list[ReferenceImage] = []
        characters: list[ReferenceImage] = []
        base_palette = plan.scenes[0].palette if plan.scenes else []
        for number, scene in enumerate(plan.scenes):
            prompt = f"{plan.style}. {scene.description}. {scene.setting}"
            with meter:
                png, pw, ph = await _draw(
                    ctx, job_id, kind="scene", ref_id=scene.id, prompt=prompt, palette=scene.palette, w=w, h=h
                )
            key = reference_key(job_id, "scene", scene.id)
            await ctx.storage.put_bytes(key, png, "image/png")
            scenes.append(ReferenceImage(id=scene.id, kind="scene", key=key, width=pw, height=ph))
            await ctx.preview("still", number, key, "scene")
            await ctx.check_cancelled()
        for number, char in enumerate(plan.characters):
            prompt = f"{plan.style}. Character portrait: {char.name}, {char.description}"
            with meter:
                png, pw, ph = await _draw(
                    ctx, job_id, kind="character", ref_id=char.id, prompt=prompt, palette=base_palette, w=w, h=h
                )
            key = reference_key(job_id, "character", char.id)
            await ctx.storage.put_bytes(key, png, "image/png")
            characters.append(ReferenceImage(id=char.id, kind="character", key=key, width=pw, height=ph))
            await ctx.preview("still", number, key, "character")
        await meter.report()
        log.info("references_ready", job_id=job_id, scenes=len(scenes), characters=len(characters))
        return ReferenceImages(scene_references=scenes, character_references=characters)


async def _draw(
    ctx: StageContext,
    job_id: str,
    *,
    kind: str,
    ref_id: str,
    prompt: str,
    palette: list[str],
    w: int,
    h: int,
) -> tuple[bytes, int, int]:
    if ctx.settings.image_provider_url:
        call = call_id(job_id, STAGE, f"{kind}_{ref_id}")
        return await image_provider.generate_png(ctx, call, prompt)
    draw = imaging.scene_image if kind == "scene" else imaging.character_image
    seed = f"{job_id}:{kind}:{ref_id}:{prompt}"
    png = await asyncio.to_thread(lambda: imaging.png_bytes(draw(palette, seed, w, h)))
    return png, w, h
