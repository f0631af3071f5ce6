"""Benchmark: one job's clips over 1 and 2 video_generator worker processes.

    .venv/bin/python bench/fanout_clips.py [--runs 3] [--seconds 180] [--resolution 360p] [--configs off,1,2]

Prepares one job once: a synthetic song (``montage_stages.media.synth``) through audio_parser,
scene_planner, reference_generator and prompt_generator in this process, into a local storage
directory; its ``video_generator`` input is built by the stage's spec, as the orchestrator builds
it. Starts a redis-server (no persistence, 127.0.0.1, a free port). Then, per round, for each
configuration in turn (interleaved: ``off``, ``1``, ``2``, ``off``, …):

- ``off``: one worker process with ``CLIP_FANOUT=false`` (the job's clips rendered by the worker
  that took its task, as before the fan-out);
- ``N``: N worker processes with the fan-out on (the default);
- a suffix ``xC`` (``offx10``, ``2x5``) sets ``MAX_PARALLEL_CLIPS=C`` for those processes (the
  clips one process renders at once: in the job, or from the clip stream), to tell the fan-out's
  effect from that of more encodes at once.

Each run starts its workers (``python -m montage_stages --stage video_generator``) on a fresh
Redis namespace, waits until every one is reading, adds the job's task to the stage stream and
waits for its result (at most ``--limit`` seconds). Reported per run: the wall time from the task
to its result, the CPU time of the workers and their ffmpeg children (the workers are stopped and
reaped after each run, so it is this script's ``RUSAGE_CHILDREN`` delta), how many clips each
worker rendered (from the clip records; ``off``: every clip by the one worker), the load average;
then medians and the ratio of each configuration to ``off``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from montage_common.redis import create_redis
from montage_common.storage import LocalStorage
from montage_contracts.keys import Keys
from montage_contracts.messages import StageResult, StageTask, dispatch_message_id, encode, result_decoder
from montage_contracts.models import Clips
from montage_contracts.pipeline import PIPELINE, JobFacts, spec
from montage_dev.devstack import EmbeddedRedis
from montage_stages.media import synth
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.settings import StageSettings
from montage_stages.stages import PROCESS
from montage_streams import Emit, StreamProducer, read_range

STAGE = "video_generator"
ROOT = Path(__file__).resolve().parents[1]


async def prepare(root: Path, seconds: float, bpm: float, settings: StageSettings) -> tuple[Path, Any, int]:
    """The job's storage and its video_generator input (the stages before it, run here)."""
    storage_dir = root / "storage"
    storage = LocalStorage(storage_dir, "bench", "http://127.0.0.1")
    song = await synth.write_audio(root / "song.mp3", synth.song(seconds, bpm))
    job = "benchprep"
    audio_key = f"audio-uploads/{job}/song.mp3"
    await storage.put_file(audio_key, song)
    ctx = StageContext.create(job, storage, settings=settings, workdir=root / "prep")
    facts = JobFacts(audio_key=audio_key, user_prompt="a neon city at night")
    outputs: dict[str, msgspec.Struct] = {}
    for stage in PIPELINE:
        if stage.name == STAGE:
            break
        outputs[stage.name] = await PROCESS[stage.name](ctx, job, stage.build_input(facts, outputs))
    video_input = spec(STAGE).build_input(facts, outputs)
    return storage_dir, video_input, len(video_input.clip_prompts.clips)  # type: ignore[attr-defined]


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


async def run_once(
    redis_url: str, storage_dir: Path, video_input: Any, config: str, env: dict[str, str], logs: Path, limit: float
) -> dict[str, Any]:
    namespace = f"fan{uuid.uuid4().hex[:8]}"
    keys = Keys(namespace)
    redis = create_redis(redis_url)
    name, _, parallel = config.partition("x")
    procs = 1 if name == "off" else int(name)
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MONTAGE_", "PYTEST_"))},
        **env,
        "REDIS_URL": redis_url,
        "REDIS_NAMESPACE": namespace,
        "STORAGE_DIR": str(storage_dir),
        "OPS_PORT": "0",
        "LOG_FORMAT": "json",
        "CLIP_FANOUT": "false" if name == "off" else "true",
        **({"MAX_PARALLEL_CLIPS": parallel} if parallel else {}),
    }
    cpu = _cpu_children()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(procs):
            with (logs / f"{namespace}-{n}.log").open("ab") as log:
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "montage_stages", "--stage", STAGE],
                        env=full,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        names = {f"{socket.gethostname()}-{p.pid}": f"w{n + 1}" for n, p in enumerate(workers)}
        for _ in range(600):  # every worker reading (its heartbeat is set when it starts)
            if all([await redis.exists(keys.worker_heartbeat(STAGE, name)) for name in names]):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"workers did not start (logs in {logs})")
        job = f"job{uuid.uuid4().hex[:8]}"
        task = StageTask(job_id=job, user_id="bench", stage=STAGE, input=video_input, dispatch=1)
        started = time.perf_counter()
        emit = Emit(keys.stage_stream(STAGE), encode(task), message_id=dispatch_message_id(job, STAGE, 1))
        await StreamProducer(redis).emit([emit])
        result: StageResult | None = None
        last = "0-0"
        while result is None and time.perf_counter() - started < limit:  # bounded by --limit
            entries = await read_range(redis, keys.results_stream(), after=last)
            for e in entries:
                last = e.entry_id
                msg = result_decoder.decode(e.payload)
                if isinstance(msg, StageResult) and msg.job_id == job:
                    result = msg
            if result is None:
                await asyncio.sleep(0.05)
        wall = time.perf_counter() - started
        if result is None or not result.ok:
            raise RuntimeError(f"{config}: no successful result in {limit:.0f} s: {result}")
        clips = msgspec.json.decode(result.output, type=Clips)
        if name == "off":
            split = {"w1": len(clips.clips)}
        else:
            records = await read_range(redis, keys.clip_records(job))
            split = dict(Counter(names.get(str(msgspec.json.decode(e.payload)["worker"]), "?") for e in records))
    finally:
        for p in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in workers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        with contextlib.suppress(Exception):
            async for key in redis.scan_iter(match=f"*{namespace}*", count=1000):
                await redis.delete(key)
        await redis.aclose()
    return {
        "wall": wall,
        "cpu": _cpu_children() - cpu,
        "clips": len(clips.clips),
        "split": split,
        "load": os.getloadavg()[0],
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--bpm", type=float, default=124.0)
    parser.add_argument("--resolution", default="360p", help="360p, 720p or 1080p")
    parser.add_argument("--configs", default="off,1,2", help="off (no fan-out, one process) and process counts")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds a run may take")
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    settings = StageSettings(video_resolution=args.resolution)
    env = {"VIDEO_RESOLUTION": args.resolution}
    width, height = settings.frame_size
    print(
        f"{args.seconds:.0f} s song, {width}x{height} {settings.video_fps} fps, MAX_PARALLEL_CLIPS "
        f"{settings.max_parallel_clips} (= CLIP_CONCURRENCY per process), {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis", persistence=False)
        redis_url = redis_server.start()
        try:
            storage_dir, video_input, n_clips = await prepare(root, args.seconds, args.bpm, settings)
            print(f"job: {n_clips} clips")
            logs = root / "logs"
            logs.mkdir()
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
            for r in range(args.runs):
                for config in configs:
                    out = await run_once(redis_url, storage_dir, video_input, config, env, logs, args.limit)
                    runs[config].append(out)
                    split = ", ".join(f"{k} {v}" for k, v in sorted(out["split"].items()))
                    print(
                        f"round {r + 1} {config:>3}: wall {out['wall']:6.2f} s, cpu {out['cpu']:6.1f} s, "
                        f"{out['clips']} clips ({split}), load {out['load']:.1f}",
                        flush=True,
                    )
        finally:
            redis_server.stop()
    print("median:")
    base = statistics.median(o["wall"] for o in runs[configs[0]])
    for config in configs:
        wall = statistics.median(o["wall"] for o in runs[config])
        cpu = statistics.median(o["cpu"] for o in runs[config])
        print(f"  {config:>3}: wall {wall:6.2f} s ({wall / base:.2f}x {configs[0]}), cpu {cpu:6.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
