"""Stage 5, video_generator: render every clip, at most ``settings.max_parallel_clips`` at once.

``async def process(ctx, job_id, input: VideoGeneratorInput, renderer: ClipRenderer | None = None) -> Clips``

The renderer defaults to the one chosen by ``settings.video_provider`` (see :mod:`renderers`);
tests and other providers inject their own. Clips are stored at ``video-clips/{job_id}/clip_{i}.mp4``.
A clip that fails is recorded in ``Clips.failed`` and the others go on (whether enough succeeded is
the orchestrator's rule). Cancellation is checked before each clip and polled while clips render;
when it raises, in-flight ffmpeg processes are killed and :class:`JobCancelled` propagates.
Progress reads "Rendering clip n of total".
"""

from __future__ import annotations

import asyncio

import structlog
from montage_common.errors import JobCancelled, MontageError
from montage_common.models import Clip, ClipFailure, ClipPrompt, Clips, VideoGeneratorInput

from montage_stages.context import StageContext
from montage_stages.metrics import CLIPS_RENDERED, track_stage
from montage_stages.renderers import ClipRenderer, renderer_for

STAGE = "video_generator"
CANCEL_POLL_SECONDS = 0.5
log = structlog.get_logger()


def clip_key(job_id: str, index: int) -> str:
    return f"video-clips/{job_id}/clip_{index}.mp4"


async def process(
    ctx: StageContext, job_id: str, input: VideoGeneratorInput, renderer: ClipRenderer | None = None
) -> Clips:
    async with track_stage(STAGE):
        await ctx.check_cancelled()
        chosen = renderer or renderer_for(ctx)
        prompts = input.clip_prompts.clips
        sem = asyncio.Semaphore(max(1, ctx.settings.max_parallel_clips))
        out_dir = ctx.scratch("clips")
        done: list[Clip] = []
        failed: list[ClipFailure] = []
        started = 0

        async def one(prompt: ClipPrompt) -> None:
            nonlocal started
            async with sem:
                await ctx.check_cancelled()
                started += 1
                await ctx.progress(f"Rendering clip {started} of {len(prompts)}")
                dest = out_dir / f"clip_{prompt.index}.mp4"
                try:
                    await chosen.render(ctx, job_id, prompt, dest)
                    key = clip_key(job_id, prompt.index)
                    await ctx.storage.put_file(key, dest, "video/mp4")
                except JobCancelled:
                    raise
                except Exception as exc:
                    message = exc.message if isinstance(exc, MontageError) else f"{type(exc).__name__}: {exc}"
                    log.warning("clip_failed", job_id=job_id, clip=prompt.index, error=message[:300])
                    CLIPS_RENDERED.labels(provider=chosen.name, outcome="failed").inc()
                    failed.append(ClipFailure(index=prompt.index, error=message[:500]))
                    return
                CLIPS_RENDERED.labels(provider=chosen.name, outcome="ok").inc()
                duration = round(prompt.end - prompt.start, 4)
                done.append(
                    Clip(
                        index=prompt.index,
                        key=key,
                        start=prompt.start,
                        end=prompt.end,
                        duration=duration,
                        provider=chosen.name,
                    )
                )

        await _run_all(ctx, [one(p) for p in prompts])
        done.sort(key=lambda c: c.index)
        failed.sort(key=lambda f: f.index)
        log.info("clips_rendered", job_id=job_id, ok=len(done), failed=len(failed))
        return Clips(clips=done, failed=failed)


async def _run_all(ctx: StageContext, jobs: list) -> None:  # type: ignore[type-arg]
    """Run the clip coroutines; a cancellation (from a clip or the poller) stops all of them."""
    tasks = {asyncio.create_task(j) for j in jobs}
    poller = asyncio.create_task(_poll_cancel(ctx))
    try:
        pending = set(tasks)
        while pending:
            finished, _ = await asyncio.wait(pending | {poller}, return_when=asyncio.FIRST_COMPLETED)
            if poller in finished:
                poller.result()  # raises JobCancelled
            for t in finished:
                pending.discard(t)
                t.result()  # only JobCancelled (or a bug) escapes a clip
    finally:
        for t in (*tasks, poller):
            t.cancel()
        await asyncio.gather(*tasks, poller, return_exceptions=True)


async def _poll_cancel(ctx: StageContext) -> None:
    while True:  # bounded by the render loop, which cancels this task
        await asyncio.sleep(CANCEL_POLL_SECONDS)
        await ctx.check_cancelled()
