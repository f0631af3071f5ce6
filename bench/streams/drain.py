"""Drain mode: Montage's stream runtime against the plain loop (the ceiling) on a pre-filled queue.

    .venv/bin/python bench/streams/drain.py [--jobs 20000] [--runs 3] [--systems plain,montage]

The workload of issues #17 and #27: six no-op stages, 2 worker processes x concurrency 3, one
local redis-server (no persistence, on a free port: its CPU is the benchmark's alone), ``--jobs``
entries already waiting on the first stage's stream when the workers start. Each worker process
connects, says it is ready and waits for a go signal; the clock starts at the go and stops at
the last job's completion (the last stage stamps ``t1`` on a ``done`` entry). Per run:

- jobs/s = jobs / (last t1 - go);
- worker CPU per stage-task = the two processes' user+system CPU (``/proc/<pid>/stat``) between
  the go and the last completion / (6 x jobs);
- Redis CPU per stage-task = ``INFO cpu`` (used_cpu_user + used_cpu_sys) over the same span /
  (6 x jobs).

Systems:

- ``plain`` (issue #27's ceiling, no guarantees): per process ``--fast-loops`` (3) coroutines,
  each ``XREADGROUP COUNT 10`` across all six streams in one call, then per batch one
  non-transactional pipeline of the next stage's ``XADD``s and one ``XACK`` per stream.
- ``fast`` (issue #17's baseline): the same read, then ``XADD`` + ``XACK`` per entry.
- ``montage``: six :class:`montage_streams.StreamConsumer` per process, concurrency 3 each,
  every default on (owner-checked atomic hand-off, claim renewal, reclaim, promotion of
  retries, safe trimming, metrics), as the stage workers run it.
- ``montage-noowner`` / ``montage-nolua``: the runtime with, in this benchmark only (never in
  the product), the hand-off's ownership check switched off / the atomic hand-off replaced by a
  plain pipeline of ``XADD``s, ``XACK`` and the read: the price of those guarantees.

``montage:N`` is the runtime with concurrency N per stage (``--systems plain,montage,montage:10``).
``montage-base`` (and ``montage-base:N``) is the same on another checkout's runtime: the directory
holding its ``montage_streams`` in ``BENCH_BASE_SRC`` (put first on the workers' ``PYTHONPATH``),
for before/after figures from one run. Ratios are against ``plain`` (``fast`` when no ``plain``).

Every run also checks what the last stage received: each job exactly once (``duplicates`` and
``missing`` are reported per run and must be 0).

Runs are interleaved (plain, montage, plain, montage, …) so a change in the machine's load falls on
both; medians of ``--runs``. ``--profile DIR`` records each system's first run with py-spy
(``PY_SPY``, default /tmp/pyspy/bin/py-spy; never from the project's lockfile) as collapsed
stacks, one file per worker process, in an extra round before the counted ones (sampling slows
the workers); summarise them with ``bench/pyspy_summary.py``. Redis calls per stage-task come
from ``INFO commandstats`` over the same span.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

STAGES = 6
DONE = "{bench}:done"
READY = "{bench}:ready"
GO = "{bench}:go"
HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
TICK = os.sysconf("SC_CLK_TCK")


# --- the systems' workers ---------------------------------------------------------------
def fast_stream(i: int) -> str:
    return f"{{bench}}:fast:s{i}"


def plain_stream(i: int) -> str:
    return f"{{bench}}:plain:s{i}"


def montage_stream(i: int) -> str:
    from montage_contracts.keys import Keys

    return Keys("bench").stage_stream(f"s{i}")


async def wait_go(redis: Redis) -> None:
    await redis.incr(READY)
    for _ in range(60_000):  # bounded: 5 minutes
        if await redis.exists(GO):
            return
        await asyncio.sleep(0.005)
    raise SystemExit("no go signal")


async def bare_worker(url: str, loops: int, stream_of: Callable[[int], str], *, ack_per_entry: bool) -> None:
    """A loop without the runtime's guarantees: per process ``loops`` coroutines, each
    ``XREADGROUP COUNT 10`` over all six stage streams at once, then per batch one
    non-transactional pipeline of the next stage's ``XADD``s and the ``XACK``s.

    ``ack_per_entry=False`` is the ceiling of issue #27 (the plain loop: one ``XACK`` per stream
    with all of the batch's ids of that stream); ``True`` the fast loop of issue #17 (one ``XACK``
    per entry)."""
    redis = Redis.from_url(url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    me = f"{socket.gethostname()}-{os.getpid()}"
    streams = [stream_of(i) for i in range(STAGES)]
    nxt = {s.encode(): (stream_of(i + 1) if i + 1 < STAGES else DONE) for i, s in enumerate(streams)}
    last = streams[-1].encode()
    await wait_go(redis)

    async def loop(n: int) -> None:
        name = f"{me}-{n}"
        while not stop.is_set():
            resp = await redis.xreadgroup("g", name, dict.fromkeys(streams, ">"), count=10, block=1000)
            if not resp:
                continue
            pipe = redis.pipeline(transaction=False)
            for stream, entries in resp:
                to, done = nxt[stream], stream == last
                for entry_id, fields in entries:
                    pipe.xadd(to, {"m": fields[b"m"], "t1": repr(time.time())} if done else {"m": fields[b"m"]})
                    if ack_per_entry:
                        pipe.xack(stream, "g", entry_id)
                if not ack_per_entry:
                    pipe.xack(stream, "g", *(entry_id for entry_id, _ in entries))
            await pipe.execute()

    await asyncio.gather(*(loop(n) for n in range(loops)))
    await redis.aclose()


def switch_off_owner_check() -> None:
    """Benchmark only (never in the product): ``ack_emit.lua`` without its ownership check, so an
    entry is handed off even when another consumer took it over. Shows that guarantee's price."""
    import montage_streams._scripts as scripts

    source = scripts.lua("ack_emit")
    checks = (
        ("if ARGV[5] ~= '' then", "if false then"),  # the XPENDING of the batch's range
        ("  local owned = mine[entry]\n", "  local owned = mine[entry] ~= false\n"),  # only: once per batch
    )
    for old, new in checks:
        if old not in source:
            raise SystemExit(f"ack_emit.lua changed: cannot switch its owner check off ({old!r})")
        source = source.replace(old, new)
    original = scripts.lua
    scripts.lua = lambda name: source if name == "ack_emit" else original(name)  # type: ignore[assignment]


def switch_off_atomic_hand_off() -> None:
    """Benchmark only (never in the product): a hand-off as a plain pipeline of the emits'
    ``XADD``s, one ``XACK`` and the fetch, without the script: no owner check and no atomicity (a
    crash between them duplicates or loses). Shows the price of the atomic hand-off."""
    from montage_streams import StreamConsumer
    from montage_streams._replies import HandOffReply, read_reply

    async def hand_off(self: Any, pairs: Any, fetch: int = 0) -> HandOffReply:
        pipe = self.redis.pipeline(transaction=False)
        for _, emits in pairs:
            for e in emits:
                pipe.xadd(e.stream, {"id": e.message_id, "m": e.payload, **dict(e.extra)})
        ids = [entry_id for entry_id, _ in pairs if entry_id]
        if ids:
            pipe.xack(self.stream, self.group, *ids)
        if fetch:
            pipe.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=fetch)
        res = await pipe.execute()
        return HandOffReply([[] for _ in pairs], read_reply(res[-1]) if fetch else [])

    StreamConsumer._hand_off = hand_off  # type: ignore[method-assign]


async def montage_worker(url: str, concurrency: int) -> None:
    from montage_common.redis import create_redis
    from montage_contracts.keys import Keys
    from montage_streams import Delivery, Emit, StreamConsumer

    if os.environ.get("BENCH_NO_OWNER_CHECK"):
        switch_off_owner_check()
    if os.environ.get("BENCH_PLAIN_HAND_OFF"):
        switch_off_atomic_hand_off()

    keys = Keys("bench")
    redis = create_redis(url)

    def handler_for(i: int):  # type: ignore[no-untyped-def]
        if i == STAGES - 1:

            async def last(d: Delivery) -> list[Emit]:
                return [Emit(DONE, d.payload, d.message_id, extra=(("t1", repr(time.time())),))]

            return last
        to = montage_stream(i + 1)

        async def handler(d: Delivery) -> list[Emit]:
            return [Emit(to, d.payload, d.message_id)]

        return handler

    consumers = [
        StreamConsumer(redis, montage_stream(i), f"g{i}", handler_for(i), keys, concurrency=concurrency)
        for i in range(STAGES)
    ]

    def stop_all() -> None:
        for c in consumers:
            c.stop()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_all)
    await wait_go(redis)
    await asyncio.gather(*(c.run() for c in consumers))
    await redis.aclose()


# --- the controller ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def redis_calls(redis: Redis) -> dict[str, int]:
    """Calls per command so far, and their µs (``usec:<command>``), from ``INFO commandstats``.

    Commands a script runs are counted on their own too (and inside the script's ``evalsha``)."""
    info = await redis.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}
    return calls | {"usec:" + k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in info.items()}


async def prefill(redis: Redis, system: str, jobs: int) -> None:
    """Groups on all six streams (from the start), then ``jobs`` entries on the first."""
    bare = {"fast": fast_stream, "plain": plain_stream}.get(system)
    for i in range(STAGES):
        stream, group = (bare(i), "g") if bare else (montage_stream(i), f"g{i}")
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    first = bare(0) if bare else montage_stream(0)
    for start in range(0, jobs, 1000):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + 1000, jobs)):
            if bare:
                pipe.xadd(first, {"m": str(n)})
            else:  # the runtime's wire fields (montage_streams._model.decode_entry)
                pipe.xadd(first, {"id": f"job-{n}", "m": str(n)})
        await pipe.execute()


async def one_run(system: str, url: str, args: argparse.Namespace, log: Path, profile: Path | None) -> dict[str, float]:
    redis = Redis.from_url(url)
    await redis.flushall()
    await prefill(redis, system, args.jobs)
    if system in ("fast", "plain"):
        cmd = [sys.executable, str(HERE), "--role", system, "--url", url, "--fast-loops", str(args.fast_loops)]
    else:
        # "montage:10": the runtime with concurrency 10 per stage instead of --concurrency
        conc = system.partition(":")[2] or str(args.concurrency)
        cmd = [sys.executable, str(HERE), "--role", "montage", "--url", url, "--concurrency", conc]
    env = dict(os.environ)
    if system.startswith("montage-noowner"):  # the owner check's price (benchmark only)
        env["BENCH_NO_OWNER_CHECK"] = "1"
    if system.startswith("montage-nolua"):  # the atomic hand-off's price (benchmark only)
        env["BENCH_PLAIN_HAND_OFF"] = "1"
    if system.startswith("montage-base"):
        if not os.environ.get("BENCH_BASE_SRC"):
            raise SystemExit("montage-base needs BENCH_BASE_SRC (a directory holding montage_streams)")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ["BENCH_BASE_SRC"], env.get("PYTHONPATH")]))
    procs: list[subprocess.Popen[bytes]] = []
    spies: list[subprocess.Popen[bytes]] = []
    try:
        with log.open("ab") as out:
            for _ in range(args.workers):
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True, env=env))
        for _ in range(3000):  # bounded: 30 s
            if int(await redis.get(READY) or 0) >= args.workers:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError(f"{system}: workers not ready (see {log})")
        if profile is not None:
            spy = os.environ.get("PY_SPY", "/tmp/pyspy/bin/py-spy")
            for p in procs:
                dest = profile / f"{system}-{p.pid}.txt"
                spies.append(subprocess.Popen(
                    [spy, "record", "--pid", str(p.pid), "--format", "raw", "--rate", "200", "--nonblocking",
                     "--output", str(dest), "--duration", "600"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))  # fmt: skip
            await asyncio.sleep(1.0)
        calls0 = await redis_calls(redis)
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        rcpu0 = await redis_cpu(redis)
        go = time.time()
        await redis.set(GO, "1")
        deadline = time.monotonic() + 600
        while await redis.xlen(DONE) < args.jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system}: {await redis.xlen(DONE)}/{args.jobs} done in time (see {log})")
            await asyncio.sleep(0.02)
        cpu1 = [cpu_seconds(p.pid) for p in procs]
        rcpu1 = await redis_cpu(redis)
        calls1 = await redis_calls(redis)
        done = [f for _, f in await redis.xrange(DONE)]
        t1 = [float(f[b"t1"]) for f in done]
        received = {f[b"m"] for f in done}
    finally:
        for s in spies:
            s.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for s in spies:
            try:
                s.wait(30)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        await redis.aclose()
    tasks = STAGES * args.jobs
    ignore = ("info", "xlen", "xrange", "usec:info", "usec:xlen", "usec:xrange")
    calls = {k: (v - calls0.get(k, 0)) / tasks for k, v in calls1.items() if k not in ignore}
    usec = {k: v for k, v in calls.items() if k.startswith("usec:")}
    calls = {k: v for k, v in calls.items() if not k.startswith("usec:")}
    return (
        {
            "jobs_s": args.jobs / (max(t1) - go),
            "worker_us_per_task": 1e6 * (sum(cpu1) - sum(cpu0)) / tasks,
            "redis_us_per_task": 1e6 * (rcpu1 - rcpu0) / tasks,
            "redis_calls_per_task": sum(calls.values()),
            "load1": os.getloadavg()[0],
            "duplicates": len(done) - len(received),
            "missing": args.jobs - len(received),
        }
        | {f"calls_{k}": round(v, 3) for k, v in calls.items() if v >= 0.001}
        | {f"us_{k[5:]}": round(v, 2) for k, v in usec.items() if v >= 0.01}
    )


async def controller(args: argparse.Namespace) -> None:
    binary = shutil.which("redis-server") or "redis-server"
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    systems = args.systems.split(",")
    rows: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    loads: list[float] = [os.getloadavg()[0]]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    try:
        time.sleep(0.5)
        if args.profile:  # an extra round under py-spy first; its figures are not counted
            for system in systems:
                r = await one_run(system, url, args, data / f"{system}.log", args.profile)
                print(f"profiled {system} (not counted): " + json.dumps({k: round(v, 1) for k, v in r.items()}))
        for run in range(args.runs):
            for system in systems:
                r = await one_run(system, url, args, data / f"{system}.log", None)
                rows[system].append(r)
                loads.append(r["load1"])
                print(f"run {run + 1} {system}: " + json.dumps({k: round(v, 2) for k, v in r.items()}), flush=True)
    finally:
        server.terminate()
        server.wait(10)
        if not args.keep_logs:
            shutil.rmtree(data, ignore_errors=True)
    med = {s: {k: statistics.median(r.get(k, 0.0) for r in rs) for k in rs[0]} for s, rs in rows.items() if rs}
    lost = {s: (sum(r["missing"] for r in rs), sum(r["duplicates"] for r in rs)) for s, rs in rows.items()}
    print(
        "\nlost / duplicated jobs over all runs: " + ", ".join(f"{s} {m:.0f} / {d:.0f}" for s, (m, d) in lost.items())
    )
    print(f"\n{args.jobs} jobs pre-filled, {args.workers} worker processes, medians of {args.runs}; "
          f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}, median {statistics.median(loads):.1f}")  # fmt: skip
    print(
        "| system | jobs/s | worker CPU µs per stage-task | Redis CPU µs per stage-task | Redis calls per stage-task (µs inside Redis) |"
    )
    print("|---|---:|---:|---:|---:|")
    for s, m in med.items():
        calls = ", ".join(
            f"{k[6:]} {v:.2f} ({m.get('us_' + k[6:], 0):.1f} µs)" for k, v in m.items() if k.startswith("calls_")
        )
        print(
            f"| {s} | {m['jobs_s']:,.0f} | {m['worker_us_per_task']:.0f} | {m['redis_us_per_task']:.0f} "
            f"| {m['redis_calls_per_task']:.2f} ({calls}) |"
        )
    base = "plain" if "plain" in med else "fast"
    for name in med:
        if name == base or base not in med:
            continue
        f, m = med[base], med[name]
        print(f"\n{name} / {base}: throughput {m['jobs_s'] / f['jobs_s']:.2f}x (goal >= 0.6x), "
              f"worker CPU per stage-task {m['worker_us_per_task'] / f['worker_us_per_task']:.2f}x (goal <= 1.5x), "
              f"Redis CPU per stage-task {m['redis_us_per_task'] / f['redis_us_per_task']:.2f}x (goal <= 2x)")  # fmt: skip
        ratios = [b["jobs_s"] / a["jobs_s"] for a, b in zip(rows[base], rows[name], strict=False)]
        print("per-round throughput ratios: " + ", ".join(f"{x:.2f}" for x in ratios))
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "medians": med, "loads": loads}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--role", choices=["bench", "fast", "plain", "montage"], default="bench")
    p.add_argument("--url", default="")
    p.add_argument("--systems", default="plain,montage")
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=3, help="per stage, per process (montage)")
    p.add_argument("--fast-loops", type=int, default=3, help="read/pipeline loops per process (fast)")
    p.add_argument("--profile", type=Path, default=None, help="py-spy each system's first run into this dir")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args()
    if args.role == "fast":
        asyncio.run(bare_worker(args.url, args.fast_loops, fast_stream, ack_per_entry=True))
    elif args.role == "plain":
        asyncio.run(bare_worker(args.url, args.fast_loops, plain_stream, ack_per_entry=False))
    elif args.role == "montage":
        asyncio.run(montage_worker(args.url, args.concurrency))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(controller(args))


if __name__ == "__main__":
    main()
