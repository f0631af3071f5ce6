"""Stage 5, video_generator: every clip rendered and encoded once, in its final form.

``async def process(ctx, job_id, input: VideoGeneratorInput, renderer: ClipRenderer | None = None) -> Clips``

Two steps per clip, at most ``settings.max_parallel_clips`` of each at once:

1. the renderer (chosen by ``settings.video_provider``, see :mod:`renderers`; tests inject their
   own) provides the clip's source: a still to animate, or a provider's video;
2. as soon as the clip's place in the video is known (:func:`timeline.plan_segments`: it depends
   on whether its neighbours rendered), one ffmpeg run draws its frames, including the transition
   from the previous clip, and encodes them with the final codec settings
   (:func:`clip_encoder.segment_args`).

The clips stored at ``video-clips/{job_id}/clip_{i}.mp4`` tile the song frame by frame, so the
composer joins them without re-encoding; ``Clip.start``/``end`` are the span a clip covers in the
video (a failed clip's span goes to the clip before it, the first clip's to the one after) and
``Clip.duration`` its exact length. A clip that fails is recorded in ``Clips.failed`` and the others
go on (whether enough succeeded is the orchestrator's rule), except when fewer than the spec's
minimum rendered and the clip provider was unavailable for some (a retryable failure): then the
stage raises :class:`ProviderUnavailable`, so the runtime retries it on its schedule and the job
ends with ``GENERATION_ERROR``, ``retryable: true``, once the retries are spent (clips the
provider refused are only counted, unless every missing clip was refused: then the stage fails with
:class:`ContentRefused`, ``VALIDATION_ERROR``, not retryable). A clip whose encode fails is failed
too and its neighbours are encoded again to cover it (an encode with a transition is first tried
again as a cut, since the previous clip's source may be the broken one). Cancellation is checked
before each step and polled while clips render; when it raises, in-flight ffmpeg processes are
killed and :class:`JobCancelled` propagates. Progress reads "Rendering clip n of total".

Fan-out (``ctx.fanout``, set by the worker): step 2 runs on every video_generator worker instead
of this process. Each fetched source is stored under ``video-clips/{job_id}/sources/`` and each
decided segment goes out as a clip entry (:mod:`clip_fanout`) whose record says whether it was
encoded; everything else (the segment plan, a failed encode tried again as a cut, the failure
rules, the costs, one per clip) is decided here exactly as without fan-out. Progress then counts
the clips as their records arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog
from montage_common.storage import layout
from montage_contracts.errors import BudgetExceededError, GenerationError, JobCancelled, MontageError
from montage_contracts.messages import call_id
from montage_contracts.models import Clip, ClipFailure, ClipPrompt, Clips, Transition, VideoGeneratorInput
from montage_contracts.pipeline import spec

from montage_stages.media import ffmpeg
from montage_stages.media.clip_encoder import Source, StillSource, VideoSource, segment_args
from montage_stages.media.timeline import Segment, plan_segments, too_short
from montage_stages.providers.costing import clip_encode_usd, local_cost
from montage_stages.providers.renderers import ClipRenderer, renderer_for
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.metrics import CLIPS_RENDERED, track_stage
from montage_stages.runtime.provider_http import ContentRefused, ProviderUnavailable
from montage_stages.stages.clip_fanout import ClipEncoding, ClipEntry, ClipSource, ClipSpan, ClipsStalled

STAGE = "video_generator"
CANCEL_POLL_SECONDS = 0.5
STOP_WAIT_SECONDS = 5.0  # how long the render loop waits for its tasks to end once it is done
log = structlog.get_logger()


def clip_key(job_id: str, index: int) -> str:
    return layout.clip(job_id, index)


async def process(
    ctx: StageContext, job_id: str, input: VideoGeneratorInput, renderer: ClipRenderer | None = None
) -> Clips:
    async with track_stage(STAGE):
        await ctx.check_cancelled()
        prompts = sorted(input.clip_prompts.clips, key=lambda p: p.index)
        transitions = {t.after_clip: t for t in input.transitions if t.kind != "cut"}
        render = _Render(ctx, job_id, renderer or renderer_for(ctx), prompts, transitions)
        clips = await render.run()
        log.info("clips_rendered", job_id=job_id, ok=len(clips.clips), failed=len(clips.failed))
        return clips


class _Render:
    """One job's clips: sources fetched, segments encoded as their neighbours' outcomes arrive."""

    def __init__(
        self,
        ctx: StageContext,
        job_id: str,
        renderer: ClipRenderer,
        prompts: list[ClipPrompt],
        transitions: dict[int, Transition],
    ) -> None:
        self.ctx, self.job_id, self.renderer = ctx, job_id, renderer
        self.prompts = prompts
        self.transitions = transitions
        self.fps = ctx.settings.video_fps
        parallel = max(1, ctx.settings.max_parallel_clips)
        self.fetch_slots = asyncio.Semaphore(parallel)
        self.encode_slots = asyncio.Semaphore(parallel)
        self.sources_dir = ctx.scratch("sources")
        self.out_dir = ctx.scratch("clips")
        self.ok: dict[int, bool] = {}
        self.sources: dict[int, Source] = {}
        self.errors: dict[int, str] = {}
        self.encoded: dict[int, Segment] = {}  # what is stored under clip_key(i)
        self.encoding: set[int] = set()
        self.tasks: dict[asyncio.Task[Any], tuple[str, int, Segment | None]] = {}
        self.started: set[int] = set()
        self.attempts = 0
        self.provider_errors: list[GenerationError] = []  # the renderer's failures, in order
        self.stored: dict[int, ClipSource] = {}  # fan-out: each source's copy in storage
        self.costed: set[int] = set()
        # A refused reservation ends the stage, but only once the calls already paid for are done:
        # a clip handed to a clip worker (or a provider call) in flight renders anyway, and is billed.
        self.refused: BudgetExceededError | None = None

    async def run(self) -> Clips:
        for p in self.prompts:
            if too_short(p, self.fps):
                self._fail(p.index, "clip is shorter than one frame")
            else:
                self._spawn(self._fetch(p), "fetch", p.index)
        stop = asyncio.Event()
        poller = asyncio.create_task(_poll_cancel(self.ctx, stop), name=f"cancel-poll-{self.job_id}")
        plan: dict[int, Segment] = {}
        try:
            while True:
                if self.refused is None:  # after a refusal nothing new starts; what runs ends
                    plan = plan_segments(self.prompts, self.ok, self.transitions, self.fps)
                    for index, seg in plan.items():
                        if self.encoded.get(index) != seg and index not in self.encoding:
                            self.encoding.add(index)
                            self._spawn(self._encode(seg), "encode", index, seg)
                if not self.tasks:
                    break
                finished, _ = await asyncio.wait({*self.tasks, poller}, return_when=asyncio.FIRST_COMPLETED)
                if poller in finished:
                    poller.result()  # raises JobCancelled
                for task in finished - {poller}:
                    self._finished(task)
        finally:
            # The poller ends by `stop`, not only by its cancel (redis-py may swallow a cancel that
            # lands mid-command); the wait is bounded either way, so a stuck task never holds the result.
            stop.set()
            for t in (*self.tasks, poller):
                t.cancel()
            _, stuck = await asyncio.wait({*self.tasks, poller}, timeout=STOP_WAIT_SECONDS)
            if stuck:
                log.warning("render_tasks_stuck", job_id=self.job_id, count=len(stuck))
            for t in {*self.tasks, poller} - stuck:
                if not t.cancelled():
                    t.exception()  # retrieved: no "exception never retrieved" noise
        if self.refused is not None:
            raise self.refused
        self._check_provider(len(plan))
        done = []
        for index, seg in sorted(plan.items()):
            assert self.encoded.get(index) == seg, "every decided segment is encoded"
            span = seg.span
            source = self.sources.get(index)
            CLIPS_RENDERED.labels(provider=self.renderer.name, outcome="ok").inc()
            done.append(
                Clip(
                    index=index,
                    key=clip_key(self.job_id, index),
                    start=span.start,
                    end=span.end,
                    duration=round(span.frames / self.fps, 4),
                    provider=self.renderer.name,
                    provider_job_id=source.provider_job_id if isinstance(source, VideoSource) else "",
                    trace_id=source.trace_id if isinstance(source, VideoSource) else "",
                )
            )
        failed = [ClipFailure(index=i, error=e[:500]) for i, e in sorted(self.errors.items())]
        return Clips(clips=done, failed=failed)

    def _check_provider(self, rendered: int) -> None:
        """Too few clips because the clip provider was unavailable: the stage fails retryably."""
        transient = [e for e in self.provider_errors if e.retryable]
        refused = [e for e in self.provider_errors if isinstance(e, ContentRefused)]
        if rendered >= spec(STAGE).min_clips or not (transient or refused):
            return
        if transient:
            message = f"Insufficient clips generated ({rendered} of {len(self.prompts)}): {transient[0].message}"
            raise ProviderUnavailable(message[:500])
        # the provider refused clips under its content policy: the same prompts are refused again
        message = f"Insufficient clips generated ({rendered} of {len(self.prompts)}): {refused[0].message}"
        raise ContentRefused(message[:500])

    def _spawn(self, coro: Coroutine[Any, Any, Any], kind: str, index: int, seg: Segment | None = None) -> None:
        self.tasks[asyncio.create_task(coro)] = (kind, index, seg)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        kind, index, seg = self.tasks.pop(task)
        if kind == "encode":
            self.encoding.discard(index)
        exc = task.exception()
        if isinstance(exc, BudgetExceededError):  # the stage ends once the calls in flight are done
            if self.refused is None:
                log.info("clips_draining_after_refusal", job_id=self.job_id, in_flight=len(self.tasks))
            self.refused = self.refused or exc
            return
        if isinstance(exc, JobCancelled | ClipsStalled):  # the whole stage ends, not this clip
            raise exc
        if exc is not None and not isinstance(exc, Exception):
            raise exc
        if exc is not None:
            if kind == "fetch" and isinstance(exc, GenerationError):
                self.provider_errors.append(exc)
            message = exc.message if isinstance(exc, MontageError) else f"{type(exc).__name__}: {exc}"
            log.warning(f"clip_{kind}_failed", job_id=self.job_id, clip=index, error=message[:300])
            if seg is not None and seg.previous is not None:
                # the previous clip's source may be the broken one: try again with a cut
                self.transitions.pop(seg.previous.index, None)
            else:
                self._fail(index, message)
        elif kind == "fetch":
            self.sources[index] = task.result()
            self.ok[index] = True
        elif self.ok.get(index):
            assert seg is not None
            self.encoded[index] = seg

    def _fail(self, index: int, message: str) -> None:
        CLIPS_RENDERED.labels(provider=self.renderer.name, outcome="failed").inc()
        self.ok[index] = False
        self.errors[index] = message
        self.sources.pop(index, None)
        self.encoded.pop(index, None)

    async def _fetch(self, prompt: ClipPrompt) -> Source:
        async with self.fetch_slots:
            await self.ctx.check_cancelled()
            if self.refused is not None:
                raise self.refused
            dest = self.sources_dir / f"clip_{prompt.index}.mp4"
            source = await self.renderer.render(self.ctx, self.job_id, prompt, dest)
            if not isinstance(source, StillSource | VideoSource):
                raise TypeError(f"renderer {self.renderer.name} gave {type(source).__name__}, not a clip source")
            if self.ctx.fanout is not None:
                self.stored[prompt.index] = await self._store_source(prompt.index, source)
            return source

    async def _store_source(self, index: int, source: Source) -> ClipSource:
        """The source in storage for the clip workers, named by its content (so a coordinator that
        takes over after a crash names the same source the same way)."""
        digest = await asyncio.to_thread(_digest, source.path)
        key = layout.clip_work_file(self.job_id, f"sources/clip_{index}_{digest}{source.path.suffix}")
        await self.ctx.storage.put_file(key, source.path)
        if isinstance(source, StillSource):
            return ClipSource(key=key, kind="still", motion=source.motion)
        return ClipSource(key=key, kind="video", seconds=source.seconds)

    async def _encode(self, seg: Segment) -> None:
        """Encode the clip (here or on a clip worker) once its price is reserved against the job's
        budget; a refused reservation stops the stage (``BudgetExceededError``)."""
        index = seg.span.index
        if self.refused is not None:
            raise self.refused
        price = clip_encode_usd(self.ctx.settings, seg.span.frames / self.fps)
        async with self.ctx.budget.reserved(call_id(self.job_id, STAGE, f"clip_{index}"), price):
            if self.ctx.fanout is not None:
                return await self._encode_elsewhere(seg)
            return await self._encode_here(seg)

    async def _encode_here(self, seg: Segment) -> None:
        index = seg.span.index
        own = self.sources[index]
        previous = self.sources.get(seg.previous.index) if seg.previous is not None else None
        async with self.encode_slots:
            await self.ctx.check_cancelled()
            if self.refused is not None:  # refused while this one waited for a slot: not started
                raise self.refused
            if index not in self.started:
                self.started.add(index)
                await self.ctx.progress(f"Rendering clip {len(self.started)} of {len(self.prompts)}")
            started = time.perf_counter()
            self.attempts += 1
            dest = self.out_dir / f"clip_{index}.{self.attempts}.mp4"
            s = self.ctx.settings
            await ffmpeg.run(segment_args(seg, own, previous, s, dest), exe=s.ffmpeg_path)
            seconds = time.perf_counter() - started
        await self.ctx.storage.put_file(clip_key(self.job_id, index), dest, "video/mp4")
        with contextlib.suppress(OSError):
            dest.unlink()
        await self._cost(index, seconds)
        await self.ctx.preview("clip", index, clip_key(self.job_id, index), None)

    async def _cost(self, index: int, seconds: float) -> None:
        """The clip's cost: one per clip (a clip encoded again keeps its call id)."""
        if index in self.costed:
            return
        self.costed.add(index)
        call = call_id(self.job_id, STAGE, f"clip_{index}")
        await self.ctx.cost(local_cost(self.ctx, call, "local:render", seconds))

    async def _encode_elsewhere(self, seg: Segment) -> None:
        """The segment as a clip entry, encoded by whichever video_generator worker takes it."""
        assert self.ctx.fanout is not None
        index = seg.span.index
        await self.ctx.check_cancelled()
        previous = self.stored.get(seg.previous.index) if seg.previous is not None else None
        entry = ClipEntry(
            job_id=self.job_id,
            index=index,
            output_key=clip_key(self.job_id, index),
            span=ClipSpan.of(seg.span),
            previous=ClipSpan.of(seg.previous) if seg.previous is not None and previous is not None else None,
            transition=seg.kind if previous is not None else "cut",
            transition_frames=seg.transition_frames if previous is not None else 0,
            source=self.stored[index],
            previous_source=previous,
            encoding=ClipEncoding.of(self.ctx.settings),
        )
        record = await self.ctx.fanout.render(entry)
        if record.cancelled:
            await self.ctx.check_cancelled()
            raise JobCancelled("Job cancelled by user", job_id=self.job_id)
        if not record.ok:
            raise ffmpeg.FfmpegError(record.error or "the clip was not encoded")
        if index not in self.started:
            self.started.add(index)
            await self.ctx.progress(f"Rendering clip {len(self.started)} of {len(self.prompts)}")
        await self._cost(index, record.seconds)
        await self.ctx.preview("clip", index, entry.output_key, None)


def _digest(path: Path) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


async def _poll_cancel(ctx: StageContext, stop: asyncio.Event) -> None:
    """Raise :class:`JobCancelled` once the job is cancelled; return once ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CANCEL_POLL_SECONDS)
        if not stop.is_set():
            await ctx.check_cancelled()
