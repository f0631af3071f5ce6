"""Benchmark of the stream runtime against a bare Redis Streams loop and its peers.

    .venv/bin/python bench/streams/run.py [--systems montage,bare,taskiq,bullmq,arq] [--runs 3] [--rate 200,500]

``montage-base`` runs the same workload on another checkout's runtime (``BENCH_BASE_SRC``: the
directory holding its ``montage_streams``, or ``montage_common`` for checkouts from before the
runtime became its own package), for before/after figures from one run.

Starts its own redis-server (no persistence, FLUSHALL between runs). Per system and run: two
worker processes (each: six stages, concurrency 3 per stage), a warm-up, then one producer
process sends the jobs one by one; the final stage records each job's completion time. Reports
the median over the runs of throughput (jobs / (last completion - first send)) and end-to-end
latency p50/p99, both flat out and at fixed offered rates below saturation.

Peers run from their own venvs (never our lockfile):
    uv venv /tmp/peers-taskiq && uv pip install --python /tmp/peers-taskiq taskiq taskiq-redis hiredis
    uv venv /tmp/peers-bullmq && uv pip install --python /tmp/peers-bullmq bullmq hiredis
    uv venv /tmp/peers-arq && uv pip install --python /tmp/peers-arq arq hiredis
(override with PEER_TASKIQ_PYTHON etc.); a peer whose python is missing is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DONE = "{bench}:done"


@dataclass
class System:
    name: str
    python: str
    worker: list[str]
    produce: list[str]
    env: dict[str, str] = field(default_factory=dict)


def systems() -> dict[str, System]:
    ours = str(ROOT / ".venv/bin/python")

    def peer(name: str) -> str:
        return os.environ.get(f"PEER_{name.upper()}_PYTHON", f"/tmp/peers-{name}/bin/python")

    return {
        "montage": System("montage", ours, ["montage.py", "worker"], ["montage.py", "produce"]),
        "bare": System("bare", ours, ["bare.py", "worker"], ["bare.py", "produce"]),
        # The runtime of another checkout (BENCH_BASE_SRC: a dir holding montage_streams), for before/after.
        "montage-base": System("montage-base", ours, ["montage.py", "worker"], ["montage.py", "produce"],
                               {"PYTHONPATH": os.environ.get("BENCH_BASE_SRC", "")}),
        "taskiq": System("taskiq", peer("taskiq"),
                         ["-m", "taskiq", "worker", "peer_taskiq:broker", "--workers", "1", "--max-async-tasks", "3",
                          "--no-configure-logging"],
                         ["peer_taskiq.py", "produce"]),
        "bullmq": System("bullmq", peer("bullmq"), ["peer_bullmq.py", "worker"], ["peer_bullmq.py", "produce"]),
        "arq": System("arq", peer("arq"), ["peer_arq.py", "worker"], ["peer_arq.py", "produce"],
                      {"ARQ_POLL_DELAY": os.environ.get("ARQ_POLL_DELAY", "0.01")}),
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    """Processes of one run, each in its own session; all killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, sys_: System, args: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
        path = os.pathsep.join(p for p in (str(HERE), sys_.env.get("PYTHONPATH", "")) if p)
        env = {**os.environ, **sys_.env, "BENCH_REDIS_URL": url, "PYTHONPATH": path}
        cmd = [sys_.python, *args, *(["--url", url] if args[0].endswith(".py") else [])]
        with log.open("ab") as err:
            p = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=err, stderr=err, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()


async def wait_done(redis: Redis, n: int, limit: float) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if await redis.xlen(DONE) >= n:
            return True
        await asyncio.sleep(0.01)
    return False


async def one_run(sys_: System, url: str, jobs: int, rate: float, logs: Path) -> dict[str, float] | None:
    redis = Redis.from_url(url)
    await redis.flushall()
    procs = Procs()
    log = logs / f"{sys_.name}.log"
    try:
        for _ in range(2):
            procs.start(sys_, sys_.worker, url, log)
        warm = procs.start(sys_, [*sys_.produce, "--jobs", "30"], url, log)
        if not await wait_done(redis, 30, 60):
            print(f"  {sys_.name}: warm-up did not complete (see {log})", file=sys.stderr)
            return None
        warm.wait(10)
        await redis.delete(DONE)
        args = [*sys_.produce, "--jobs", str(jobs), *(["--rate", str(rate)] if rate else [])]
        producer = procs.start(sys_, args, url, log)
        if not await wait_done(redis, jobs, 300):
            print(f"  {sys_.name}: {await redis.xlen(DONE)}/{jobs} done in time (see {log})", file=sys.stderr)
            return None
        producer.wait(30)
        entries = await redis.xrange(DONE)
    finally:
        procs.stop()
        await redis.aclose()
    t0 = [float(f[b"m"]) for _, f in entries]
    t1 = [float(f[b"t1"]) for _, f in entries]
    lat = sorted(b - a for a, b in zip(t0, t1, strict=True))
    return {
        "jobs_s": len(entries) / (max(t1) - min(t0)),
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(int(len(lat) * 0.99), len(lat) - 1)],
        "max_ms": 1000 * lat[-1],
    }


def median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--systems", default="bare,montage,taskiq,bullmq,arq")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=10000, help="jobs per flat-out run (ours and bare)")
    p.add_argument("--peer-jobs", type=int, default=1500, help="jobs per flat-out run of a peer")
    p.add_argument(
        "--rate", default="200", help="offered jobs/s of the fixed-rate runs, comma-separated (every system)"
    )
    p.add_argument("--no-max", action="store_true", help="fixed-rate runs only")
    p.add_argument("--rate-jobs", type=int, default=1500)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--interleave", action="store_true", help="alternate systems run by run (before/after)")
    a = p.parse_args()

    binary = shutil.which("redis-server") or "redis-server"
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        time.sleep(0.5)
        plan: list[tuple[str, System, str, int, float]] = []
        for name in a.systems.split(","):
            sys_ = systems()[name]
            if not Path(sys_.python).exists():
                print(f"skip {name}: no {sys_.python}", file=sys.stderr)
                continue
            peer = not name.startswith(("montage", "bare"))
            modes = [] if a.no_max else [("max", a.peer_jobs if peer else a.jobs, 0.0)]
            modes += [(f"rate{r:g}", a.rate_jobs, r) for r in map(float, a.rate.split(","))]
            plan += [(name, sys_, mode, jobs, rate) for mode, jobs, rate in modes]
        # --interleave: run 1 of every system and mode, then run 2 …, so a change in the machine's
        # load during the session falls on every system alike (before/after comparisons).
        order = (
            [(i, step) for i in range(a.runs) for step in plan]
            if a.interleave
            else [(i, step) for step in plan for i in range(a.runs)]
        )
        rows_of: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _, (name, sys_, mode, jobs, rate) in order:
            r = await one_run(sys_, url, jobs, rate, data)
            if r:
                r["load1"] = os.getloadavg()[0]
                rows_of.setdefault((name, mode), []).append(r)
                print(f"{name} {mode} {rate or ''}: {r}", file=sys.stderr)
        for name, _, mode, jobs, rate in plan:
            if rows := rows_of.get((name, mode)):
                results.setdefault(name, {})[mode] = median(rows) | {"rate": rate, "jobs": jobs}
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(data, ignore_errors=True)

    rates = [f"rate{r:g}" for r in map(float, a.rate.split(","))]
    print("| system | jobs/s (flat out) | p50 / p99 ms (flat out) | " + " | ".join(
        f"p50 / p99 ms at {r[4:]} jobs/s" for r in rates) + " |")  # fmt: skip
    print("|---|---:|---:|" + "---:|" * len(rates))
    for name, modes in results.items():
        m = modes.get("max")
        cells = [f"{m['jobs_s']:,.0f}", f"{m['p50_ms']:,.1f} / {m['p99_ms']:,.1f}"] if m else ["-", "-"]
        for rate in rates:
            r = modes.get(rate)
            cells.append(f"{r['p50_ms']:,.1f} / {r['p99_ms']:,.1f}" if r else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
