"""Benchmark: jobs under chaos against the same jobs undisturbed (issue #22).

    REDIS_URL=redis://… DATABASE_URL=postgresql://…/postgres \\
        .venv/bin/python bench/chaos.py [--repetitions 5] [--jobs 10] [--low 30] [--high 90] [--interval 1]

Starts the whole system (two workers per stage, supervised as Kubernetes would: a process that
exits or fails its liveness probe is started again; ``tests/e2e/chaos.py``) on a fresh database
and Redis namespace, with the end-to-end suite's low-resolution settings. First one undisturbed
batch: ``--jobs`` songs of ``--low``..``--high`` seconds, uploaded at once, each by its own user.
Then ``--repetitions`` times the same batch while a process is SIGKILLed about every
``--interval`` seconds (stage workers of every kind, video_generator coordinators and clip
renderers among them, and the orchestrator). Prints, per repetition: jobs completed, failed,
ended by TIMEOUT, kills, and each job's excess over its undisturbed time (max and median); and
writes everything to ``tests/artifacts/chaos-bench.json``. ``DATABASE_URL`` names a server
where a database may be created (and is dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the chaos machinery lives beside the tests that use it

from tests.e2e.chaos import Chaos, make_song, run_batch, song_lengths, supervised_stack

ARTIFACTS = ROOT / "tests" / "artifacts"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--low", type=float, default=30.0)
    parser.add_argument("--high", type=float, default=90.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    redis_url, database_url = os.environ.get("REDIS_URL", ""), os.environ.get("DATABASE_URL", "")
    if not redis_url or not database_url:
        raise SystemExit("set REDIS_URL and DATABASE_URL (a server where a database may be created)")
    report: dict[str, object] = {"args": vars(args), "repetitions": []}
    with tempfile.TemporaryDirectory(prefix="montage-chaos-") as tmp:
        root = Path(tmp)
        (root / "songs").mkdir()
        songs = [(make_song(root / "songs", s), s) for s in song_lengths(args.jobs, args.low, args.high)]
        with supervised_stack(database_url, redis_url, root / "stack", ARTIFACTS / "chaos-bench-logs") as target:
            baseline = asyncio.run(run_batch(target, songs))
            base = [r.seconds for r in baseline]
            print(f"undisturbed: {sum(r.status == 'completed' for r in baseline)}/{len(baseline)} completed, "
                  f"seconds {base}", flush=True)  # fmt: skip
            report["undisturbed"] = [vars(r) for r in baseline]
            reps: list[dict[str, object]] = []
            for rep in range(args.repetitions):
                chaos = Chaos(target, interval=args.interval, seed=rep)
                runs = asyncio.run(run_batch(target, songs, chaos))
                excess = [r.seconds - b for r, b in zip(runs, base, strict=True) if r.status == "completed"]
                row = {
                    "repetition": rep + 1,
                    "completed": sum(r.status == "completed" for r in runs),
                    "failed": sum(r.status == "failed" for r in runs),
                    "timeouts": sum(r.error_code == "TIMEOUT" for r in runs),
                    "kills": len(chaos.kills),
                    "killed": sorted({k.name.rsplit("-", 1)[0] for k in chaos.kills}),
                    "roles": sorted({k.role for k in chaos.kills}),
                    "max_excess_seconds": round(max(excess, default=0.0), 1),
                    "median_excess_seconds": round(statistics.median(excess), 1) if excess else None,
                    "within_2_min": all(e <= 120 for e in excess) and len(excess) == len(runs),
                    "jobs": [vars(r) for r in runs],
                    "kill_log": [vars(k) for k in chaos.kills],
                }
                reps.append(row)
                print({k: v for k, v in row.items() if k not in ("jobs", "kill_log")}, flush=True)
            report["repetitions"] = reps
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "chaos-bench.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
