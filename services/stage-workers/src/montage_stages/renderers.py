"""Clip renderers: the seam between video_generator and whatever makes the pictures.

A :class:`ClipRenderer` turns one :class:`~montage_common.models.ClipPrompt` into a *source* for
the clip (see :mod:`clip_encoder`); video_generator then encodes every clip once, in its final
form. :class:`LocalRenderer` provides the reference still (or a palette frame in text-only mode)
that ffmpeg animates with a zoom or pan plus brightness and scale pulses on the clip's beats.
:class:`RagnarokRenderer` asks ragnarok-proxy for the clip and provides the downloaded video.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Protocol

import aiohttp
from montage_common.errors import GenerationError, RetryableError
from montage_common.messages import call_id
from montage_common.models import ClipPrompt, CostItem

from montage_stages import imaging
from montage_stages.clip_encoder import Source, StillSource, VideoSource
from montage_stages.context import StageContext
from montage_stages.costing import local_cost, usd


class ClipRenderer(Protocol):
    name: str

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        """Provide the clip's source, written next to ``dest`` (a path in the task's scratch space);
        raise on failure (the clip is then recorded as failed)."""


class LocalRenderer:
    """A still for ffmpeg to animate; drawing one (text-only mode) is priced as
    ``{job_id}:video_generator:still_<i>``."""

    name = "local"

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        still = dest.with_suffix(".png")
        if prompt.reference_keys:
            character = prompt.reference_keys[1:] if prompt.index % 2 else []
            await ctx.storage.get_file((character or prompt.reference_keys)[0], still)
        else:
            started = time.perf_counter()
            width, height = ctx.settings.frame_size
            w, h = 2 * width, 2 * height
            seed = f"{job_id}:{prompt.index}:{prompt.prompt}"
            png = await asyncio.to_thread(lambda: imaging.png_bytes(imaging.scene_image(prompt.palette, seed, w, h)))
            await asyncio.to_thread(still.write_bytes, png)
            seconds = time.perf_counter() - started
            await ctx.cost(
                local_cost(ctx, call_id(job_id, "video_generator", f"still_{prompt.index}"), "local:render", seconds)
            )
        return StillSource(still, prompt.motion)


class RagnarokRenderer:
    """RAGNAROK through ragnarok-proxy: submit the prompt, poll the job, download the clip.

    Transport and 5xx failures are retryable; a failed or timed-out job is a GenerationError.
    """

    name = "ragnarok"

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        s = ctx.settings
        base = s.ragnarok_proxy_url.rstrip("/")
        duration = prompt.end - prompt.start
        body = {
            "prompt": prompt.prompt,
            "duration": duration,
            "negative_prompt": prompt.negative_prompt,
            "reference_images": [await ctx.storage.signed_url(k, 3600) for k in prompt.reference_keys],
        }
        headers = {"X-Montage-Internal": s.internal_secret}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                job = await _json(
                    session.post(f"{base}/api/nexus/ragnarok/generate/enriched", json=body, headers=headers)
                )
                remote = str(job.get("job_id") or job.get("id") or "")
                if not remote:
                    raise GenerationError("ragnarok-proxy returned no job id")
                url = ""
                for _ in range(max(1, int(s.ragnarok_clip_timeout_seconds / s.ragnarok_poll_seconds))):
                    await ctx.check_cancelled()
                    status = await _json(session.get(f"{base}/api/nexus/ragnarok/jobs/{remote}", headers=headers))
                    state = str(status.get("status", "")).lower()
                    if state in ("failed", "error"):
                        raise GenerationError(f"ragnarok job failed: {status.get('error', '')}")
                    url = str(status.get("video_url") or status.get("result_url") or "")
                    if state in ("completed", "succeeded", "done") and url:
                        break
                    await asyncio.sleep(s.ragnarok_poll_seconds)
                else:
                    raise GenerationError("ragnarok job timed out")
                async with session.get(url) as resp:
                    if resp.status != 200:
                        raise RetryableError(f"ragnarok clip download answered {resp.status}")
                    data = await resp.read()
                    await asyncio.to_thread(dest.write_bytes, data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableError(f"ragnarok-proxy unreachable: {type(exc).__name__}") from None
        await ctx.cost(
            CostItem(
                call_id=call_id(job_id, "video_generator", f"ragnarok_{prompt.index}"),
                api_name="ragnarok",
                amount=usd(duration * s.ragnarok_usd_per_second),
            )
        )
        return VideoSource(dest, duration)


async def _json(request: object) -> dict[str, object]:
    async with request as resp:  # type: ignore[attr-defined]
        if resp.status == 429 or resp.status >= 500:
            raise RetryableError(f"ragnarok-proxy answered {resp.status}")
        if resp.status >= 400:
            raise GenerationError(f"ragnarok-proxy answered {resp.status}")
        data = await resp.json(content_type=None)
    return data if isinstance(data, dict) else {}


def renderer_for(ctx: StageContext) -> ClipRenderer:
    """The renderer selected by ``settings.video_provider``."""
    return RagnarokRenderer() if ctx.settings.video_provider == "ragnarok" else LocalRenderer()
