"""The image-to-video seam: a scene's still + the clip's prompt + its length -> a clip.

:class:`RunwayRenderer` (``VIDEO_PROVIDER=runway``) animates the clip's reference still with
Runway's image-to-video API through its official SDK (``runwayml``, ``AsyncRunwayML`` with its
own retries off), as the API requires:

1. **Create** ``POST /v1/image_to_video`` (``X-Runway-Version``, bearer key): ``model``
   (``RUNWAY_MODEL``, gen4_turbo), ``promptImage`` (the still as a JPEG data URI, made by ffmpeg
   at the video's size), ``promptText`` (the clip's prompt, at most 1000 characters), ``ratio``
   (gen4_turbo's closest to the video's), ``duration`` (5 s, or 10 s for a clip longer than 5 s).
   The answer is the task id.
2. **Poll** ``GET /v1/tasks/{id}`` every ``RUNWAY_POLL_SECONDS`` while ``PENDING``,
   ``THROTTLED`` or ``RUNNING``, at most ``RUNWAY_CLIP_TIMEOUT_SECONDS``; a poll that fails
   transiently (5xx, a timeout) is made again, since the task runs, and is billed, regardless.
3. ``SUCCEEDED``: its first ``output`` URL is downloaded; video_generator cuts it to the clip's
   beat-aligned span and encodes it once with every other clip (:mod:`clip_encoder`), fanned out
   over the video_generator workers as any clip.

Limits (:mod:`provider_limits`): each task holds one of Runway's shared slots
(``PROVIDER_MAX_CONCURRENCY``) from its creation to its end, so every worker together never has
more than ``N`` tasks at Runway; a 429 (create or poll) sets the shared backoff for its
``Retry-After`` and the call is made again after it, by this worker and every other.

Failures: a ``FAILED`` task whose ``failureCode`` starts with ``SAFETY.`` is content moderation
(:class:`ContentRefused`: not retried, the same prompt is refused again); ``INTERNAL.*`` and a task
not finished in time are :class:`ProviderUnavailable` (retried); another failure code, a
``CANCELLED`` task and another 4xx are :class:`GenerationError`; 5xx, timeouts and connection
errors :class:`ProviderUnavailable`.

Billing: each task Runway created is billed on its own: one ``CostItem`` per task, call id
``{job_id}:video_generator:runway_<i>@<task id>`` (``messages.request_call_id``), amount the task's
reported ``cost.credits`` × ``RUNWAY_USD_PER_CREDIT``, so a stage retried after a task ran records
a second row and the same task reported twice is recorded once. Before the task is created the clip
reserves its list price (the requested seconds × ``RUNWAY_USD_PER_SECOND``) in the job's budget.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import runwayml
import structlog
from montage_contracts.errors import GenerationError
from montage_contracts.messages import call_id, request_call_id
from montage_contracts.models import ClipPrompt, CostItem
from montage_contracts.pricing import runway_requested_seconds, runway_usd

from montage_stages.media import ffmpeg, imaging
from montage_stages.media.clip_encoder import Source, VideoSource
from montage_stages.providers.costing import usd
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import ContentRefused, ProviderUnavailable

log = structlog.get_logger()

PROVIDER = "runway"
PROMPT_TEXT_MAX = 1000
# gen4_turbo's output sizes (width:height); the one closest to the video's aspect is asked for
RATIOS = ("1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672")
RUNNING = frozenset({"PENDING", "THROTTLED", "RUNNING"})


def ratio_for(width: int, height: int) -> str:
    aspect = width / max(height, 1)
    return min(RATIOS, key=lambda r: abs(int(r.split(":")[0]) / int(r.split(":")[1]) - aspect))


def retry_after(exc: runwayml.APIStatusError) -> float | None:
    raw = exc.response.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def translate(what: str, exc: Exception) -> GenerationError:
    """The Montage error of a ``runwayml`` SDK failure (a 429 is handled before, by backing off)."""
    if isinstance(exc, runwayml.APITimeoutError):
        return ProviderUnavailable(f"{what} timed out")
    if isinstance(exc, runwayml.APIConnectionError):
        return ProviderUnavailable(f"{what} unreachable: {type(exc.__cause__ or exc).__name__}")
    if isinstance(exc, runwayml.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = str(body.get("error") or body.get("message") or exc.message)[:200]
        if exc.status_code == 429 or exc.status_code >= 500:
            return ProviderUnavailable(f"{what} answered {exc.status_code}: {detail}")
        return GenerationError(f"{what} answered {exc.status_code}: {detail}")
    if isinstance(exc, runwayml.APIResponseValidationError | ValueError):
        return ProviderUnavailable(f"{what} answered with an unusable body: {type(exc).__name__}")
    return ProviderUnavailable(f"{what} failed: {type(exc).__name__}: {exc}"[:300])


def task_failure(task_id: str, code: str, reason: str) -> GenerationError:
    """A ``FAILED`` task's error, by its failure code (Runway's task-failure documentation)."""
    text = f"Runway task {task_id} failed ({code or 'no failure code'}): {reason[:200]}"
    if code.startswith("SAFETY"):
        return ContentRefused(f"Runway refused the clip (content moderation, {code}): {reason[:200]}")
    if code.startswith("INTERNAL") or code.startswith("INPUT_PREPROCESSING.INTERNAL"):
        return ProviderUnavailable(text)
    return GenerationError(text)


class RunwayRenderer:
    """Clips by Runway's image-to-video API (see the module docstring)."""

    name = PROVIDER

    async def render(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> Source:
        s = ctx.settings
        seconds = prompt.end - prompt.start
        requested = runway_requested_seconds(seconds)
        width, height = s.frame_size
        image = await self._prompt_image(ctx, job_id, prompt, dest)
        client = ctx.providers.runway(s.runway_base_url, s.runway_api_key, s.runway_request_timeout_seconds)
        limits = ctx.providers.limits
        call = call_id(job_id, "video_generator", f"runway_{prompt.index}")
        # reserved before the task exists (so under a key of this attempt), settled under the task's id
        attempt_key = f"{call}@attempt-{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + s.runway_clip_timeout_seconds
        async with ctx.budget.reserved(attempt_key, runway_usd(s.price_card, requested)):
            throttles = 0
            while True:
                async with limits.slot(PROVIDER):
                    try:
                        created = await client.image_to_video.create(  # type: ignore[call-overload]
                            model=s.runway_model,
                            prompt_image=image,
                            prompt_text=(prompt.prompt or "")[:PROMPT_TEXT_MAX] or "cinematic motion",
                            ratio=ratio_for(width, height),
                            duration=requested,
                        )
                    except runwayml.RateLimitError as exc:
                        await limits.throttled(PROVIDER, retry_after(exc), attempt=throttles)
                        throttles += 1
                        if time.monotonic() > deadline:
                            raise ProviderUnavailable(
                                "Runway kept answering 429 until the clip's time ran out"
                            ) from None
                        continue
                    except runwayml.APIError as exc:
                        await limits.report(PROVIDER, False, str(exc))
                        raise translate("Runway image_to_video", exc) from None
                    task_id = created.id
                    log.info("runway_task_created", clip=prompt.index, task=task_id, seconds=requested)
                    task = await self._poll(ctx, client, task_id, deadline)
                    break
            credits = getattr(getattr(task, "cost", None), "credits", None)
            if isinstance(credits, int | float):
                amount = usd(float(credits) * s.runway_usd_per_credit)
            else:  # no cost reported: a succeeded task at its list price, a failed one free
                amount = runway_usd(s.price_card, requested) if task.status == "SUCCEEDED" else usd(0)
            # one row per task Runway created (the same task reported twice is recorded once)
            await ctx.cost(
                CostItem(call_id=request_call_id(call, task_id), api_name=f"runway:{s.runway_model}", amount=amount)
            )
            if task.status == "FAILED":
                error = task_failure(task_id, str(getattr(task, "failure_code", "") or ""), str(task.failure))
                await limits.report(PROVIDER, not error.retryable, error.message)  # a refusal: Runway answered
                raise error
            if task.status != "SUCCEEDED":
                raise GenerationError(f"Runway task {task_id} ended {task.status}")
            await limits.report(PROVIDER, True)
        outputs = list(getattr(task, "output", []) or [])
        if not outputs:
            raise ProviderUnavailable(f"Runway task {task_id} succeeded without an output")
        await _download(ctx, str(outputs[0]), dest)
        log.info("runway_clip_rendered", clip=prompt.index, task=task_id, cost=str(amount))
        return VideoSource(dest, seconds, provider_job_id=task_id)

    async def _poll(self, ctx: StageContext, client: runwayml.AsyncRunwayML, task_id: str, deadline: float) -> Any:
        """The task at its end (``SUCCEEDED``, ``FAILED``, ``CANCELLED``); 429s back every worker off."""
        s = ctx.settings
        limits = ctx.providers.limits
        throttles = 0
        while True:
            await ctx.check_cancelled()
            if time.monotonic() > deadline:
                await _cancel(client, task_id)
                raise ProviderUnavailable(
                    f"Runway task {task_id} not finished after {s.runway_clip_timeout_seconds:g} s"
                )
            await asyncio.sleep(s.runway_poll_seconds)
            await limits.before_call(PROVIDER)
            try:
                task = await client.tasks.retrieve(task_id)
            except runwayml.RateLimitError as exc:
                await limits.throttled(PROVIDER, retry_after(exc), attempt=throttles)
                throttles += 1
                continue
            except runwayml.APIError as exc:
                await limits.report(PROVIDER, False, str(exc))
                error = translate(f"Runway task {task_id}", exc)
                if not error.retryable:
                    raise error from None
                # the task exists and will be billed: keep asking for it (until the clip's deadline)
                log.warning("runway_poll_failed", task=task_id, error=error.message[:200])
                continue
            if task.status not in RUNNING:
                return task

    async def _prompt_image(self, ctx: StageContext, job_id: str, prompt: ClipPrompt, dest: Path) -> str:
        """The clip's still as a JPEG data URI at the video's size (Runway takes up to 5 MB)."""
        s = ctx.settings
        still = dest.with_suffix(".png")
        if prompt.reference_keys:
            character = prompt.reference_keys[1:] if prompt.index % 2 else []
            await ctx.storage.get_file((character or prompt.reference_keys)[0], still)
        else:  # text-only mode: the local palette frame is what Runway animates
            width, height = s.frame_size
            seed = f"{job_id}:{prompt.index}:{prompt.prompt}"
            png = await asyncio.to_thread(
                lambda: imaging.png_bytes(imaging.scene_image(prompt.palette, seed, width, height))
            )
            await asyncio.to_thread(still.write_bytes, png)
        jpeg = dest.with_suffix(".jpg")
        width, height = s.frame_size
        await ffmpeg.run(
            ["-v", "error", "-y", "-i", str(still), "-vf",
             f"scale={width}:{height}:force_original_aspect_ratio=increase,crop={width}:{height}",
             "-frames:v", "1", "-q:v", "3", str(jpeg)],
            exe=s.ffmpeg_path,
        )  # fmt: skip
        data = await asyncio.to_thread(jpeg.read_bytes)
        return "data:image/jpeg;base64," + base64.b64encode(data).decode()


async def _cancel(client: runwayml.AsyncRunwayML, task_id: str) -> None:
    """Cancel a task that ran out of time (best effort: it is not waited for again)."""
    try:
        await client.tasks.delete(task_id)
    except runwayml.APIError:
        log.warning("runway_task_cancel_failed", task=task_id)


async def _download(ctx: StageContext, url: str, dest: Path) -> None:
    if not url.startswith(("http://", "https://")):
        raise GenerationError(f"Runway's output cannot be downloaded: {url[:100]!r}")
    session = await ctx.providers.http()
    limit = aiohttp.ClientTimeout(total=ctx.settings.runway_request_timeout_seconds)
    try:
        async with session.get(url, timeout=limit) as resp:
            if resp.status != 200:
                error = ProviderUnavailable if resp.status == 429 or resp.status >= 500 else GenerationError
                raise error(f"Runway output download answered {resp.status}")
            with dest.open("wb") as out:
                async for chunk in resp.content.iter_chunked(1 << 16):
                    await asyncio.to_thread(out.write, chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderUnavailable(f"Runway output download failed: {type(exc).__name__}") from None
