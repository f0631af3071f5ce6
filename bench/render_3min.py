"""Benchmark: a 3-minute synthetic song through the six stages.

    .venv/bin/python bench/render_3min.py [--runs 3] [--seconds 180] [--bpm 124] [--resolution 720p]

Prints each run's per-stage wall time, the CPU time it used (this process and its ffmpeg
children: less sensitive to other work on the machine than wall time) and the medians. Everything is local (LocalStorage in a
temporary directory, the local renderers), as in development mode, with the default settings
(``--resolution`` sets VIDEO_RESOLUTION). To compare with another checkout, run this file with
``PYTHONPATH=<checkout>/services/stage-workers/src``: it only uses what every version has.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
from pathlib import Path

from montage_common.storage import LocalStorage
from montage_stages.local_pipeline import run_all
from montage_stages.media import synth
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.settings import StageSettings

STAGES = ("audio_parser", "scene_planner", "reference_generator", "prompt_generator", "video_generator", "composer")


async def run_once(root: Path, song: Path, run: int, settings: StageSettings) -> tuple[dict[str, float], int]:
    storage = LocalStorage(root / f"storage{run}", "bench", "http://127.0.0.1")
    job = f"bench{run}"
    audio_key = f"audio-uploads/{job}/song{song.suffix}"
    await storage.put_file(audio_key, song)
    ctx = StageContext.create(job, storage, settings=settings, workdir=root / f"work{run}")
    cpu = _cpu_seconds()
    result = await run_all(ctx, job, audio_key, "a neon city at night")
    return {**result.seconds, "cpu": _cpu_seconds() - cpu}, len(result.clips.clips)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ffmpeg runs), user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--bpm", type=float, default=124.0)
    parser.add_argument("--resolution", default="", help="360p, 720p or 1080p (default: the settings' default)")
    args = parser.parse_args()
    s = StageSettings(video_resolution=args.resolution) if args.resolution else StageSettings()
    width, height = getattr(s, "frame_size", (s.video_width, s.video_height))
    params = getattr(s, "x264_params", "")
    print(
        f"{args.seconds:.0f} s song at {args.bpm} BPM, {width}x{height} {s.video_fps} fps, "
        f"{s.max_parallel_clips} clips in parallel, x264 {s.x264_preset} {params}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        song = await synth.write_audio(root / "song.mp3", synth.song(args.seconds, args.bpm))
        runs: list[dict[str, float]] = []
        for r in range(args.runs):
            times, n_clips = await run_once(root, song, r, s)
            runs.append(times)
            total = sum(times[stage] for stage in STAGES)
            print(
                f"run {r + 1}: total {total:.1f} s, cpu {times['cpu']:.1f} s, {n_clips} clips, "
                f"load {os.getloadavg()[0]:.1f}: " + ", ".join(f"{k} {times[k]:.2f}" for k in STAGES)
            )
        print("median:")
        for stage in STAGES:
            print(f"  {stage:20s} {statistics.median(t[stage] for t in runs):7.2f} s")
        print(f"  {'total':20s} {statistics.median(sum(t[k] for k in STAGES) for t in runs):7.2f} s")
        print(f"  {'cpu (all processes)':20s} {statistics.median(t['cpu'] for t in runs):7.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
