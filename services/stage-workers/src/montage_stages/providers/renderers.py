"""Clip renderers: the seam between video_generator and whatever makes the pictures.

A :class:`ClipRenderer` turns one :class:`~montage_contracts.models.ClipPrompt` into a *source* for
the clip (see :mod:`clip_encoder`); video_generator then encodes every clip once, in its final
form. :class:`LocalRenderer` provides the reference still (or a palette frame in text-only mode)
that ffmpeg animates with a zoom or pan plus brightness and scale pulses on the clip's beats.
:class:`RagnarokRenderer` asks RAGNAROK for the clip through ragnarok-proxy's Nexus endpoints and
provides the downloaded video; :class:`~montage_stages.providers.image_to_video.RunwayRenderer`
animates the clip's still with Runway's image-to-video API.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from montage_contracts.errors import GenerationError
from montage_contracts.messages import call_id, request_call_id
from montage_contracts.models import ClipPrompt, CostItem
from montage_contracts.pipeline import FINAL_STATUSES, JobStatus
from montage_contracts.routes import route

from montage_stages.media import imaging
from montage_stages.media.clip_encoder import Source, StillSource, VideoSource
from montage_stages.providers.costing import local_cost, ragnarok_clip_usd, usd
from montage_stages.providers.image_to_video import RunwayRenderer
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import ProviderUnavailable

log = structlog.get_logger()


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
    """RAGNAROK through ragnarok-proxy's Nexus endpoints, as any Nexus client uses them.

    1. ``POST /api/nexus/ragnarok/direct/submit?business_name=RAGNAROK_BUSINESS_NAME`` with the
       clip's prompt (fields below; the proxy forwards them to RAGNAROK as they are), as the job's
       user (``X-Montage-User-Id``), so the clip is a Nexus job of that user with its own trace id;
    2. ``GET /api/nexus/ragnarok/jobs/{job_id}`` every ``RAGNAROK_POLL_SECONDS`` until ``completed``
       or ``failed`` (at most ``RAGNAROK_CLIP_TIMEOUT_SECONDS``);
    3. the clip downloaded from its ``video_url`` (http or https).

    The Nexus job id and trace id go into the clip (``Clip.provider_job_id``, ``Clip.trace_id``) and
    the logs. The cost is RAGNAROK's ``cost_usd`` (``RAGNAROK_USD_PER_SECOND`` times the clip's
    length when it reports none), call id ``{job_id}:video_generator:ragnarok_<i>``. The proxy's
    errors pass through: 429, 502, 503, 504 and transport failures are :class:`ProviderUnavailable`
    (retryable), other 4xx and a failed RAGNAROK job :class:`GenerationError`.
    """

    name = "ragnarok"

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        s = ctx.settings
        base = s.ragnarok_proxy_url.rstrip("/")
        seconds = prompt.end - prompt.start
        width, height = s.frame_size
        # RAGNAROK renders 5-120 s; a shorter clip uses the first seconds of what it renders
        requested = min(120, max(5, math.ceil(seconds)))
        body = {
            "prompt": prompt.prompt,
            "negative_prompt": prompt.negative_prompt,
            "duration_seconds": requested,
            "width": width,
            "height": height,
            "fps": s.video_fps,
            "reference_images": [await ctx.storage.signed_url(k, 3600) for k in prompt.reference_keys],
            "montage_job_id": job_id,
            "montage_clip_index": prompt.index,
        }
        call = call_id(job_id, "video_generator", f"ragnarok_{prompt.index}")
        headers = {
            "X-Montage-Internal": s.internal_secret,
            "X-Montage-User-Id": ctx.user_id or "montage",
            "X-Request-ID": call,
        }
        # the clip reserves its price (the requested seconds at RAGNAROK_USD_PER_SECOND) before it is asked for
        limits = ctx.providers.limits
        # its price reserved, and one of RAGNAROK's shared slots held (PROVIDER_MAX_CONCURRENCY) until it ends
        async with ctx.budget.reserved(call, ragnarok_clip_usd(s, requested)), limits.slot("ragnarok"):
            session = await ctx.providers.http()
            timeout = aiohttp.ClientTimeout(total=s.ragnarok_request_timeout_seconds)
            try:
                submitted = await _nexus(
                    session.post(
                        base + route("nexusDirectSubmit").path,
                        params={"business_name": s.ragnarok_business_name},
                        json=body,
                        headers=headers,
                        timeout=timeout,
                    )
                )
                nexus_id, trace_id = str(submitted.get("job_id") or ""), str(submitted.get("trace_id") or "")
                if not nexus_id:
                    raise ProviderUnavailable("ragnarok-proxy accepted the clip without a job id")
                log.info("ragnarok_clip_submitted", clip=prompt.index, nexus_job=nexus_id, trace_id=trace_id)
                status: dict[str, object] = submitted
                polls = max(1, math.ceil(s.ragnarok_clip_timeout_seconds / max(s.ragnarok_poll_seconds, 0.01)))
                for _ in range(polls):
                    await ctx.check_cancelled()
                    await asyncio.sleep(s.ragnarok_poll_seconds)
                    status = await _nexus(
                        session.get(base + route("nexusGetJob").url(job_id=nexus_id), headers=headers, timeout=timeout)
                    )
                    if status.get("status") in FINAL_STATUSES:
                        break
                else:
                    raise ProviderUnavailable(
                        f"RAGNAROK job {nexus_id} not finished after {s.ragnarok_clip_timeout_seconds:g} s"
                    )
                if status.get("status") == JobStatus.FAILED:
                    raise GenerationError(f"RAGNAROK job {nexus_id} failed: {str(status.get('error') or '')[:200]}")
                await _download(session, str(status.get("video_url") or ""), dest, timeout)
            except (aiohttp.ClientError, TimeoutError) as exc:
                await limits.report("ragnarok", False, f"ragnarok-proxy unreachable: {type(exc).__name__}")
                raise ProviderUnavailable(f"ragnarok-proxy unreachable: {type(exc).__name__}") from None
            except GenerationError as exc:
                await limits.report("ragnarok", False, exc.message)
                raise
            await limits.report("ragnarok", True)
            reported = status.get("cost_usd")
            fallback = usd(seconds * s.ragnarok_usd_per_second)
            amount = usd(float(reported)) if isinstance(reported, int | float) else fallback
            # one row per workflow RAGNAROK ran (a retried stage submits, and is billed, again)
            await ctx.cost(CostItem(call_id=request_call_id(call, nexus_id), api_name="ragnarok", amount=amount))
        log.info("ragnarok_clip_rendered", clip=prompt.index, nexus_job=nexus_id, trace_id=trace_id, cost=str(amount))
        return VideoSource(dest, seconds, provider_job_id=nexus_id, trace_id=trace_id)


async def _nexus(request: Any) -> dict[str, object]:
    """One Nexus call's JSON body; its error passed through as a Montage error."""
    async with request as resp:
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = None
        if resp.status >= 400:
            detail = data if isinstance(data, dict) else {}
            text = f"ragnarok-proxy answered {resp.status} {detail.get('code', '')}: {detail.get('error') or detail.get('detail') or ''}"
            if resp.status in (429, 502, 503, 504) or resp.status >= 500:
                wait = resp.headers.get("Retry-After")
                raise ProviderUnavailable(text[:300] + (f" (Retry-After {wait} s)" if wait else ""))
            raise GenerationError(text[:300])
    if not isinstance(data, dict):
        raise ProviderUnavailable(f"ragnarok-proxy answered {resp.status} with an unusable body")
    return data


async def _download(session: aiohttp.ClientSession, url: str, dest: Path, limit: aiohttp.ClientTimeout) -> None:
    if not url.startswith(("http://", "https://")):
        raise GenerationError(f"RAGNAROK's video_url cannot be downloaded: {url[:100]!r}")
    async with session.get(url, timeout=limit) as resp:
        if resp.status != 200:
            error = ProviderUnavailable if resp.status == 429 or resp.status >= 500 else GenerationError
            raise error(f"RAGNAROK clip download answered {resp.status}")
        with dest.open("wb") as out:
            async for chunk in resp.content.iter_chunked(1 << 16):
                await asyncio.to_thread(out.write, chunk)


def renderer_for(ctx: StageContext) -> ClipRenderer:
    """The renderer selected by ``settings.video_provider``."""
    if ctx.settings.video_provider == "runway":
        return RunwayRenderer()
    return RagnarokRenderer() if ctx.settings.video_provider == "ragnarok" else LocalRenderer()
