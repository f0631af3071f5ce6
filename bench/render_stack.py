"""Benchmark: a 3-minute song through the stack as ``make up`` starts it, against the same stages
in one process.

    .venv/bin/python bench/render_stack.py [--runs 3] [--seconds 180] [--bpm 124] [--json out.json]

Per run: a fresh stack (``montage_dev.devstack.Stack`` on free ports: embedded Redis and Postgres
unless ``REDIS_URL``/``DATABASE_URL`` are set, the gateway, the orchestrator, one worker process
per stage, the local renderers, as in development), then one job uploaded through the gateway as
its own user and polled every 0.1 s until it is final: its wall time from the upload to
``completed``, and each stage's time as the worker measured it (``job_stages.duration_seconds``).
Then, in the same run, the same song through the same six stages in this process
(``montage_stages.local_pipeline.run_all``, as ``bench/render_3min.py``), so the ratio stack /
one process of a run compares two measurements taken a few seconds apart.

To measure another checkout (e.g. the code before a change), run this file with that checkout's
venv: the stack's processes are started with ``sys.executable``, so they run that venv's code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from montage_common.storage import LocalStorage
from montage_dev.devstack import Stack
from montage_gateway.settings import DEV_JWT_SECRET
from montage_gateway.tokens import mint_dev_token
from montage_stages.local_pipeline import run_all
from montage_stages.media import synth
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.settings import StageSettings

STAGES = ("audio_parser", "scene_planner", "reference_generator", "prompt_generator", "video_generator", "composer")
PROMPT = "A neon city at night, rain on the glass, the camera drifting slowly between the towers"
FINAL = {"completed", "failed"}


async def through_stack(root: Path, song: Path, run: int, limit: float) -> dict[str, float]:
    stack = Stack.on_free_ports(
        root / f"var{run}", extra_env={"LOG_LEVEL": "warning", "REDIS_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}"}
    )
    env = stack.start()
    base = f"http://127.0.0.1:{stack.gateway_port}"
    headers = {"Authorization": f"Bearer {mint_dev_token(DEV_JWT_SECRET, f'bench-{uuid.uuid4().hex[:8]}', 3600)}"}
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, base, headers, time.monotonic() + 120)
            form = aiohttp.FormData()
            form.add_field("user_prompt", PROMPT)
            form.add_field("audio_file", song.read_bytes(), filename=song.name, content_type="audio/mpeg")
            start = time.perf_counter()
            async with http.post(f"{base}/api/v1/upload-audio", data=form, headers=headers) as resp:
                body: Any = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"upload: {resp.status} {body}")
            job_id = body["job_id"]
            deadline = time.monotonic() + limit
            status = ""
            while status not in FINAL:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} not final after {limit} s (status {status!r})")
                await asyncio.sleep(0.1)
                async with http.get(f"{base}/api/v1/jobs/{job_id}", headers=headers) as resp:
                    status = (await resp.json()).get("status", "")
            wall = time.perf_counter() - start
            if status != "completed":
                raise RuntimeError(f"job {job_id} {status}")
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            rows = await conn.fetch(
                "SELECT stage_name, duration_seconds FROM job_stages WHERE job_id = $1", uuid.UUID(job_id)
            )
        finally:
            await conn.close()
    finally:
        stack.stop()
    return {"wall": wall, **{r["stage_name"]: float(r["duration_seconds"] or 0.0) for r in rows}}


async def _wait_ready(http: aiohttp.ClientSession, base: str, headers: dict[str, str], deadline: float) -> None:
    """Until the health route answers healthy and every stage's worker has announced itself (its
    provider's readiness is listed), so the job meets a started stack."""
    while True:
        try:
            async with http.get(f"{base}/api/v1/health", headers=headers) as resp:
                body: Any = await resp.json()
                announced = {p.get("stage") for p in body.get("providers", [])}
                if resp.status == 200 and announced >= set(STAGES):
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the stack did not become healthy")
        await asyncio.sleep(0.25)


async def in_process(root: Path, song: Path, run: int) -> dict[str, float]:
    storage = LocalStorage(root / f"storage{run}", "bench", "http://127.0.0.1")
    job = f"bench{run}"
    audio_key = f"audio-uploads/{job}/song{song.suffix}"
    await storage.put_file(audio_key, song)
    ctx = StageContext.create(job, storage, settings=StageSettings(), workdir=root / f"work{run}")
    start = time.perf_counter()
    result = await run_all(ctx, job, audio_key, PROMPT)
    return {"wall": time.perf_counter() - start, **result.seconds}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--bpm", type=float, default=124.0)
    p.add_argument("--limit", type=float, default=600.0, help="seconds a job may take")
    p.add_argument("--json", type=Path, default=None, help="append each run as a JSON line")
    args = p.parse_args()
    rows: list[tuple[dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="montage-render-stack-") as tmp:
        root = Path(tmp)
        song = await synth.write_audio(root / "song.mp3", synth.song(args.seconds, args.bpm))
        for r in range(args.runs):
            load = os.getloadavg()[0]
            stack = await through_stack(root, song, r, args.limit)
            alone = await in_process(root, song, r)
            rows.append((stack, alone))
            line = {"run": r + 1, "load1": load, "stack": stack, "one_process": alone}
            print(json.dumps(line))
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(line) + "\n")
    print(f"\n{args.seconds:.0f} s song, medians of {args.runs}:")
    print("| | through the stack | one process |")
    print("|---|---:|---:|")
    for key in ("wall", *STAGES):
        s = statistics.median(a.get(key, 0.0) for a, _ in rows)
        o = statistics.median(b.get(key, 0.0) for _, b in rows)
        print(f"| {key} | {s:.2f} s | {o:.2f} s |")
    ratios = [a["wall"] / b["wall"] for a, b in rows]
    print(
        f"stack / one process, per run: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
