"""Clip renderers: the seam between video_generator and whatever draws the pixels.

A :class:`ClipRenderer` turns one :class:`~montage_common.models.ClipPrompt` into an MP4 of exactly
``prompt.end - prompt.start`` seconds at ``dest``. :class:`LocalRenderer` animates the reference
still (or a palette frame in text-only mode) with ffmpeg: a zoom or pan plus brightness and scale
pulses on the clip's beats. :class:`RagnarokRenderer` asks ragnarok-proxy for the clip.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Protocol

import aiohttp
from montage_common.errors import GenerationError, RetryableError
from montage_common.models import ClipPrompt, CostItem

from montage_stages import ffmpeg, imaging
from montage_stages.context import StageContext
from montage_stages.costing import local_cost, usd

MAX_PULSES = 48


class ClipRenderer(Protocol):
    name: str

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> None:
        """Write the clip to ``dest``; raise on failure (the clip is then recorded as failed)."""


class LocalRenderer:
    """ffmpeg motion over a still; reports its compute time as cost ``{job_id}:video_generator:clip_<i>``."""

    name = "local"

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> None:
        s = ctx.settings
        started = time.perf_counter()
        still = dest.with_suffix(".png")
        if prompt.reference_keys:
            character = prompt.reference_keys[1:] if prompt.index % 2 else []
            await ctx.storage.get_file((character or prompt.reference_keys)[0], still)
        else:
            w, h = 2 * s.video_width, 2 * s.video_height
            seed = f"{job_id}:{prompt.index}:{prompt.prompt}"
            png = await asyncio.to_thread(lambda: imaging.png_bytes(imaging.scene_image(prompt.palette, seed, w, h)))
            await asyncio.to_thread(still.write_bytes, png)
        duration = prompt.end - prompt.start
        frames = max(1, round(duration * s.video_fps))
        await ffmpeg.run(
            [
                "-v", "error", "-y", "-i", str(still),
                "-vf", motion_filter(prompt, s.video_width, s.video_height, s.video_fps, frames),
                "-frames:v", str(frames), "-r", str(s.video_fps),
                "-c:v", "libx264", "-preset", s.clip_x264_preset, "-crf", str(s.clip_x264_crf),
                "-pix_fmt", "yuv420p",
                "-an", str(dest),
            ],
            exe=s.ffmpeg_path,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        await ctx.cost(local_cost(ctx, f"{job_id}:video_generator:clip_{prompt.index}", "local:render", seconds))


def motion_filter(prompt: ClipPrompt, width: int, height: int, fps: int, frames: int) -> str:
    """zoompan (zoom or pan over the clip) with scale pulses and an eq brightness flash on each beat.

    The still is decoded once and zoompan emits all ``frames`` from it (``d=frames``).
    """
    beats = [b for b in prompt.beats if 0 <= b < frames / fps][:MAX_PULSES]
    t = f"(on/{fps})"
    zpulse = "+".join(f"0.035*exp(-9*({t}-{b:.3f}))*gte({t},{b:.3f})" for b in beats) or "0"
    bpulse = "+".join(f"0.12*exp(-10*(t-{b:.3f}))*gte(t,{b:.3f})" for b in beats) or "0"
    p = f"(on/{max(1, frames - 1)})"
    center_x, center_y = "iw/2-(iw/zoom/2)", "ih/2-(ih/zoom/2)"
    zoom, x = {
        "zoom_in": (f"1.0+0.18*{p}", center_x),
        "zoom_out": (f"1.18-0.18*{p}", center_x),
        "pan_left": ("1.15", f"(iw-iw/zoom)*(1-{p})"),
        "pan_right": ("1.15", f"(iw-iw/zoom)*{p}"),
    }.get(prompt.motion, ("1.06", center_x))
    return (
        f"scale={2 * width}:{2 * height},setsar=1,"
        f"zoompan=z='{zoom}+{zpulse}':x='{x}':y='{center_y}':d={frames}:s={width}x{height}:fps={fps},"
        f"eq=brightness='{bpulse}':eval=frame,format=yuv420p"
    )


class RagnarokRenderer:
    """RAGNAROK through ragnarok-proxy: submit the prompt, poll the job, download the clip.

    Transport and 5xx failures are retryable; a failed or timed-out job is a GenerationError.
    """

    name = "ragnarok"

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> None:
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
                for _ in range(max(1, int(s.ragnarok_timeout_seconds / s.ragnarok_poll_seconds))):
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
                call_id=f"{job_id}:video_generator:ragnarok_{prompt.index}",
                api_name="ragnarok",
                amount=usd(duration * s.ragnarok_usd_per_second),
            )
        )


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
