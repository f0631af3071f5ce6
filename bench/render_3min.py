"""Benchmark: a 3-minute synthetic song through the six stages at the default resolution.

    .venv/bin/python bench/render_3min.py [--runs 3] [--seconds 180] [--bpm 124]

Prints each run's per-stage wall time and the medians. Everything is local (LocalStorage in a
temporary directory, the local renderers), as in development mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from montage_common.storage import LocalStorage
from montage_stages import synth
from montage_stages.context import StageContext
from montage_stages.local_pipeline import run_all
from montage_stages.settings import StageSettings

STAGES = ("audio_parser", "scene_planner", "reference_generator", "prompt_generator", "video_generator", "composer")


async def run_once(root: Path, song: Path, run: int) -> tuple[dict[str, float], int]:
    storage = LocalStorage(root / f"storage{run}", "bench", "http://127.0.0.1")
    job = f"bench{run}"
    audio_key = f"audio-uploads/{job}/song{song.suffix}"
    await storage.put_file(audio_key, song)
    ctx = StageContext.create(job, storage, settings=StageSettings(), workdir=root / f"work{run}")
    result = await run_all(ctx, job, audio_key, "a neon city at night")
    return result.seconds, len(result.clips.clips)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--bpm", type=float, default=124.0)
    args = parser.parse_args()
    s = StageSettings()
    print(
        f"{args.seconds:.0f} s song at {args.bpm} BPM, {s.video_width}x{s.video_height} {s.video_fps} fps, "
        f"{s.max_parallel_clips} clips in parallel, x264 {s.x264_preset}, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        song = await synth.write_audio(root / "song.mp3", synth.song(args.seconds, args.bpm))
        runs: list[dict[str, float]] = []
        for r in range(args.runs):
            times, n_clips = await run_once(root, song, r)
            runs.append(times)
            total = sum(times.values())
            print(
                f"run {r + 1}: total {total:.1f} s, {n_clips} clips: "
                + ", ".join(f"{k} {v:.2f}" for k, v in times.items())
            )
        print("median:")
        for stage in STAGES:
            print(f"  {stage:20s} {statistics.median(t[stage] for t in runs):7.2f} s")
        print(f"  {'total':20s} {statistics.median(sum(t.values()) for t in runs):7.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
