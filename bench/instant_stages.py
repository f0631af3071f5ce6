"""Benchmark-only stage workers: the six stage streams consumed as the real workers consume them,
with handlers that answer at once.

    .venv/bin/python bench/instant_stages.py [--go-key KEY]     # environment as a stage worker's

Each process runs, for every stage of :data:`montage_contracts.pipeline.PIPELINE` and every
partition, one :class:`montage_streams.StreamConsumer` with the arguments
:class:`montage_stages.worker.StageWorker` gives it (group, consumer name, concurrency shared out
over the partitions, claim idle, block, retry policy, grace; settings from the same
``WorkerSettings``). The handler decodes the :class:`StageTask`, builds a valid minimal output of
the stage's ``output_type`` (three clips: the clip minimum) and returns the :class:`StageResult`
on the job's results stream with the same message id a real worker uses. What it leaves out, being
the workers' own cost and not the control plane's: the liveness key, the cancel check, the
temporary work directory and progress/cost messages (the results carry no costs).

With ``--go-key`` the process connects, adds 1 to ``<go-key>:ready`` and starts consuming only
once ``<go-key>`` exists (so a benchmark can queue work first and start the clock on its go).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
from collections.abc import Callable

import msgspec
from montage_common.redis import create_redis, ready, target_of
from montage_common.settings import load
from montage_common.storage import layout
from montage_contracts.keys import Keys
from montage_contracts.messages import StageResult, StageTask, dispatch_message_id, encode, task_decoder
from montage_contracts.models import (
    AudioAnalysis,
    Clip,
    ClipPrompt,
    ClipPrompts,
    Clips,
    ClipScript,
    ReferenceImage,
    ReferenceImages,
    Scene,
    ScenePlan,
    Transition,
    VideoOutput,
)
from montage_contracts.pipeline import MIN_CLIPS, PIPELINE, StageSpec
from montage_stages.worker import WorkerSettings
from montage_streams import Delivery, Emit, StreamConsumer, default_consumer_name

try:
    from montage_common import tracing
except ImportError:  # a --base checkout older than tracing
    tracing = None  # type: ignore[assignment]

_out = msgspec.json.Encoder(decimal_format="number")
SPAN = 2.0  # seconds per clip of the instant plan


def _spans() -> list[tuple[float, float]]:
    return [(i * SPAN, (i + 1) * SPAN) for i in range(MIN_CLIPS)]


def _audio(job_id: str) -> AudioAnalysis:
    duration = SPAN * MIN_CLIPS
    return AudioAnalysis(duration=duration, tempo=120.0, beat_timestamps=[0.5 * i for i in range(int(duration * 2))])


def _plan(job_id: str) -> ScenePlan:
    scene = Scene(id="scene_1", description="instant")
    return ScenePlan(
        style="instant",
        characters=[],
        scenes=[scene],
        clip_scripts=[ClipScript(index=i, start=a, end=b, scene_id=scene.id, description="instant")
                      for i, (a, b) in enumerate(_spans())],
        transitions=[Transition(after_clip=i) for i in range(MIN_CLIPS - 1)],
    )  # fmt: skip


def _references(job_id: str) -> ReferenceImages:
    key = layout.reference_image(job_id, "scene", "scene_1")
    return ReferenceImages(scene_references=[ReferenceImage(id="scene_1", kind="scene", key=key)])


def _prompts(job_id: str) -> ClipPrompts:
    return ClipPrompts(
        clips=[
            ClipPrompt(index=i, prompt="instant", start=a, end=b, scene_id="scene_1")
            for i, (a, b) in enumerate(_spans())
        ]
    )


def _clips(job_id: str) -> Clips:
    return Clips(
        clips=[
            Clip(index=i, key=layout.clip(job_id, i), start=a, end=b, duration=b - a)
            for i, (a, b) in enumerate(_spans())
        ]
    )


def _video(job_id: str) -> VideoOutput:
    return VideoOutput(key=layout.final_video(job_id), duration=SPAN * MIN_CLIPS, width=640, height=360, size_bytes=1)


# One builder per output type, so a stage whose output type changes fails loudly here.
BUILDERS: dict[type[msgspec.Struct], Callable[[str], msgspec.Struct]] = {
    AudioAnalysis: _audio,
    ScenePlan: _plan,
    ReferenceImages: _references,
    ClipPrompts: _prompts,
    Clips: _clips,
    VideoOutput: _video,
}


def instant_output(stage: StageSpec, job_id: str) -> msgspec.Struct:
    return BUILDERS[stage.output_type](job_id)


def handler_for(stage: StageSpec, keys: Keys):  # type: ignore[no-untyped-def]
    async def handle(d: Delivery) -> list[Emit]:
        task: StageTask = task_decoder.decode(d.payload)
        output = msgspec.Raw(_out.encode(instant_output(stage, task.job_id)))
        if tracing is None:  # a --base checkout older than tracing
            result = StageResult(
                job_id=task.job_id, stage=stage.name, dispatch=task.dispatch, ok=True, output=output, attempts=d.attempt
            )
        else:  # as the real worker: a span continuing the task's trace, its context on the result
            attributes = {"montage.job_id": task.job_id, "montage.stage": stage.name, "montage.attempt": d.attempt}
            with tracing.span(f"stage {stage.name}", parent=task.traceparent, attributes=attributes):
                result = StageResult(
                    job_id=task.job_id,
                    stage=stage.name,
                    dispatch=task.dispatch,
                    ok=True,
                    output=output,
                    attempts=d.attempt,
                    traceparent=tracing.traceparent(),
                )
        stream = keys.results_stream(keys.partition_of(task.job_id))
        return [Emit(stream, encode(result), message_id=dispatch_message_id(task.job_id, stage.name, task.dispatch))]

    return handle


async def run(go_key: str) -> None:
    settings = load(WorkerSettings)
    if tracing is not None:
        tracing.setup("stage-instant")  # on when the OTEL_* variables say so, as in a real worker
    keys = Keys(settings.redis_namespace, settings.redis_partitions)
    redis = create_redis(target_of(settings), socket_timeout=10.0)
    await ready(redis)
    name = default_consumer_name()
    per_partition = max(1, math.ceil(settings.worker_concurrency / len(keys.all_partitions)))
    consumers = [
        StreamConsumer(
            redis=redis,
            stream=keys.stage_stream(stage.name, p),
            group=keys.stage_group(stage.name),
            handler=handler_for(stage, keys),
            keys=keys,
            consumer=name,
            concurrency=per_partition,
            claim_idle_ms=settings.claim_idle_ms,
            block_ms=settings.stream_block_ms,
            retry=settings.retry_policy,
            grace=settings.shutdown_grace_seconds,
        )
        for stage in PIPELINE
        for p in keys.all_partitions
    ]
    stop = asyncio.Event()

    def stop_all() -> None:
        stop.set()
        for c in consumers:
            c.stop()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_all)
    if go_key:
        await redis.incr(f"{go_key}:ready")
        for _ in range(36_000):  # bounded: an hour
            if stop.is_set() or await redis.exists(go_key):
                break
            await asyncio.sleep(0.1)
    if not stop.is_set():
        await asyncio.gather(*(c.run() for c in consumers))
    await redis.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--go-key", default="", help="wait for this Redis key before consuming")
    asyncio.run(run(p.parse_args().go_key))
