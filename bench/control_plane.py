"""The control plane: jobs through the real gateway, orchestrator(s), Postgres and Redis, with
stage handlers that answer at once (``bench/instant_stages.py``).

    .venv/bin/python bench/control_plane.py [--jobs 600] [--runs 3] [--replicas 1,2] [--paced 100 --rate 10]

Starts a redis-server (no persistence) and a Postgres (``pgserver``; or ``DATABASE_URL``, whose
database is then used as it is: its counters include other clients), then per run, for each
replica count in turn (interleaved: 1, 2, 1, 2, …; Redis flushed and the job tables truncated
before each): the orchestrator process(es) (``python -m montage_orchestrator``), one gateway
(``python -m montage_gateway``) and ``--workers`` instant-stage processes that wait for a go.

1. **Uploads.** ``--jobs`` jobs are created through the gateway's ``POST /api/v1/upload-audio``
   (``--upload-concurrency`` in flight, each as its own user, a 4-second 8 kHz WAV; the
   orchestrator checks the type, reads the duration, decodes two windows with ffmpeg, stores the
   file and writes the job with its first dispatch). Uploads go to the first replica. Reported:
   uploads/s, CPU per upload of the gateway and the orchestrator (with its ffmpeg children),
   Postgres transactions per upload.
2. **Drain.** With every job's first task queued, the workers get their go: jobs/s from the go
   to the last job final in Postgres; per job: Postgres transactions (``pg_stat_database``
   ``xact_commit + xact_rollback`` delta, minus this script's own queries), orchestrator CPU
   (``/proc/<pid>/stat`` user + system, every replica), Postgres CPU (the postmaster and its
   backends), Redis CPU (``INFO cpu``) and the instant workers' CPU. ``1 / orchestrator CPU per
   job`` is the ceiling of one orchestrator process if it had a core to itself.
3. **Paced.** ``--paced`` more jobs uploaded at ``--rate`` jobs/s while everything runs: the
   latency the orchestrator adds per stage, from the entry ids (Redis's clock) of each stage's
   result on the results stream to the next stage's task on its stream (for the composer: to the
   job's ``completed`` event); the drain's figure (a backlog) is reported too.

``--traced`` adds each replica count with tracing on (``OTEL_EXPORTER_OTLP_ENDPOINT`` for every
service and the instant workers, to an OTLP/HTTP receiver process, ``montage_dev.fakes.otlp``; the
SDK's default batching), interleaved with the same count off (1, 1 traced, 2, 2 traced, …); the
summary adds the per-run ratios, on / off.

``--base DIR`` (a checkout of an earlier commit, e.g. ``git worktree add --detach /tmp/base <commit>``)
adds that checkout's stack as the before figure, interleaved run by run (base 1, 1, base 2, 2, …):
its services and instant workers run with ``PYTHONPATH`` on the checkout's ``services/*/src`` and
``libs/*/src``, so the same venv imports the older packages; the summary adds the per-run ratios.

Every job must complete; a run that does not is an error. ``--env KEY=VALUE`` (repeatable) sets a
variable for every service, e.g. ``--env RESULTS_CONCURRENCY=32 --env DB_POOL_SIZE=40``.
``--profile DIR`` records with py-spy the gateway and the first orchestrator during the uploads,
and the first replica during the drain, of one extra run (``PY_SPY``, default /tmp/pyspy/bin/py-spy, a throwaway
venv: ``uv venv /tmp/pyspy && uv pip install --python /tmp/pyspy/bin/python py-spy``); that run
is extra and not counted. Summarise with ``bench/pyspy_summary.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from montage_contracts.events import decode_event
from montage_contracts.keys import Keys
from montage_contracts.messages import StageResult, result_decoder, task_decoder
from montage_contracts.pipeline import STAGES
from montage_dev.devstack import EmbeddedPostgres, EmbeddedRedis, Stack, free_port, wait_port
from montage_gateway.settings import DEV_JWT_SECRET
from montage_gateway.tokens import mint_dev_token
from montage_streams import read_range
from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
PROMPT = "A slow drift through a glass city at dawn, reflections folding into waves of light"
NAMESPACE = "cp"
GO = "{cp}:bench:go"
TABLES = "jobs, job_stages, job_costs, job_cleanup_log, orchestrator_outbox, orchestrator_handled"


def tiny_wav(seconds: float = 4.0, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(((i * 37) % 2000 - 1000).to_bytes(2, "little", signed=True) for i in range(int(seconds * rate)))
        )
    return buf.getvalue()


# --- CPU of processes --------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu(pid: int, children: bool = False) -> float:
    """User + system seconds of ``pid`` (+ its reaped children's with ``children``); 0 when gone."""
    try:
        f = _stat(pid)
    except (OSError, IndexError):
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / TICK


def sys_cpu(pid: int) -> float:
    """System (kernel) seconds of ``pid``."""
    try:
        return int(_stat(pid)[12]) / TICK
    except (OSError, IndexError):
        return 0.0


def tree_cpu(root: int) -> float:
    """``root`` with its reaped children plus its live children (a postmaster and its backends)."""
    total = cpu(root, children=True)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat(int(d.name))[1]) == root:
                    total += cpu(int(d.name), children=True)
    return total


# --- the stack ---------------------------------------------------------------------------
class Infra:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis = EmbeddedRedis(root / "redis", persistence=False)
        self.pg: EmbeddedPostgres | None = None
        self.database_url = os.environ.get("DATABASE_URL", "")
        self.pg_pid = 0

    def start(self) -> None:
        self.redis.start()
        if not self.database_url:
            self.pg = EmbeddedPostgres(self.root / "pg")
            self.database_url = self.pg.start()
            self.pg_pid = int(self.pg.server.get_pid())  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.redis.stop()
        if self.pg:
            self.pg.stop()


class Services:
    """One run's processes: orchestrator replicas, a gateway, instant-stage workers."""

    def __init__(
        self, infra: Infra, replicas: int, workers: int, logs: Path, extra_env: dict[str, str], base: Path | None
    ) -> None:
        self.infra, self.replicas, self.workers, self.logs = infra, replicas, workers, logs
        self.extra_env = extra_env
        self.base = base
        self.orchestrators: list[subprocess.Popen[bytes]] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.stage_workers: list[subprocess.Popen[bytes]] = []
        self.gateway_port = free_port()

    def _spawn(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=out, start_new_session=True)

    def start(self) -> None:
        env = {
            **os.environ,
            "REDIS_URL": self.infra.redis.url,
            "DATABASE_URL": self.infra.database_url,
            "REDIS_NAMESPACE": NAMESPACE,
            "GUARD_IP_REQUESTS": "1000000",  # every upload comes from 127.0.0.1
            "MAX_CONNECTIONS_PER_CLIENT": "0",  # every client is 127.0.0.1
            "LOG_FORMAT": "json",
            **self.extra_env,
        }
        if self.base is not None:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in base_sources(self.base))
        orch_ports = [free_port() for _ in range(self.replicas)]
        stack = Stack(var_dir=self.logs, gateway_port=self.gateway_port, orchestrator_port=orch_ports[0])
        specs = {s.name: s for s in stack.service_specs(env)}
        orch, gw = specs["orchestrator"], specs["gateway"]
        for i, port in enumerate(orch_ports):
            extra = {"PORT": str(port), "OPS_PORT": str(free_port()), "REPLICA_ID": f"orchestrator-{i + 1}"}
            if i:
                extra["RUN_MIGRATIONS"] = "false"
            self.orchestrators.append(self._spawn(orch.argv, {**orch.env, **extra}, f"orchestrator-{i + 1}"))
            wait_port("127.0.0.1", port, time.monotonic() + 60)
        self.gateway = self._spawn(gw.argv, {**gw.env, "OPS_PORT": str(free_port())}, "gateway")
        wait_port("127.0.0.1", self.gateway_port, time.monotonic() + 60)
        worker_env = {**orch.env, "OPS_PORT": "0"}
        for i in range(self.workers):
            argv = [sys.executable, str(HERE / "instant_stages.py"), "--go-key", GO]
            self.stage_workers.append(self._spawn(argv, worker_env, f"instant-{i + 1}"))

    def stop(self) -> None:
        procs = [*self.stage_workers, *([self.gateway] if self.gateway else []), *self.orchestrators]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 25
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def base_sources(checkout: Path) -> list[Path]:
    """The source folders of a checkout's packages (services and libs)."""
    found = sorted([*checkout.glob("services/*/src"), *checkout.glob("libs/*/src")])
    if not any((p / "montage_orchestrator").is_dir() for p in found):
        raise SystemExit(f"--base {checkout}: no services/orchestrator/src/montage_orchestrator there")
    return found


# --- measuring -----------------------------------------------------------------------------
class Meter:
    """Counters of every process at one moment; ``delta`` of two."""

    def __init__(self, pg: asyncpg.Connection, redis: Redis, infra: Infra, svc: Services) -> None:
        self.pg, self.redis, self.infra, self.svc = pg, redis, infra, svc
        self.own_queries = 0  # our own transactions in the measured database

    async def xacts(self) -> int:
        self.own_queries += 1
        return int(await self.pg.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"))  # fmt: skip

    async def finished(self) -> int:
        self.own_queries += 1
        return int(await self.pg.fetchval("SELECT count(*) FROM jobs WHERE status IN ('completed', 'failed')"))

    async def snapshot(self) -> dict[str, float]:
        # A busy backend reports its transactions to pg_stat_database only some seconds after it
        # goes idle (PGSTAT_IDLE_INTERVAL, 10 s): wait that out so every phase is counted whole.
        await asyncio.sleep(11.0)
        info = await self.redis.info("cpu")
        return {
            "t": time.time(),
            "xacts": await self.xacts() - self.own_queries,
            "orchestrator": sum(cpu(p.pid, children=True) for p in self.svc.orchestrators),
            "orchestrator_1": cpu(self.svc.orchestrators[0].pid, children=True),
            "orchestrator_self": sum(cpu(p.pid) for p in self.svc.orchestrators),  # without ffmpeg
            "orchestrator_sys": sum(sys_cpu(p.pid) for p in self.svc.orchestrators),
            "gateway": cpu(self.svc.gateway.pid, children=True) if self.svc.gateway else 0.0,
            "workers": sum(cpu(p.pid) for p in self.svc.stage_workers),
            "postgres": tree_cpu(self.infra.pg_pid) if self.infra.pg_pid else float("nan"),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        }


def _spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy recording a process (raw collapsed stacks, 200 Hz) until SIGINT."""
    spy = os.environ.get("PY_SPY", "/tmp/pyspy/bin/py-spy")
    argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking",
            "--output", str(output), "--duration", "600"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


async def upload_all(base: str, wav: bytes, users: list[str], concurrency: int, rate: float = 0.0) -> list[str]:
    """Upload one job per user; their job ids. ``rate``: jobs/s (0: as fast as ``concurrency`` allows)."""
    sem = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(i: int, user: str, http: aiohttp.ClientSession) -> str:
        if rate:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        async with sem:
            token = mint_dev_token(DEV_JWT_SECRET, user, 3600)
            form = aiohttp.FormData()
            form.add_field("user_prompt", PROMPT)
            form.add_field("audio_file", wav, filename="song.wav", content_type="audio/wav")
            async with http.post(f"{base}/api/v1/upload-audio", data=form,
                                 headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
                body = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"upload: {resp.status} {body}")
                return str(body["job_id"])

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as http:
        return list(await asyncio.gather(*(one(i, u, http) for i, u in enumerate(users))))


async def wait_finished(meter: Meter, n: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while (done := await meter.finished()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{done}/{n} jobs final after {limit:.0f} s")
        await asyncio.sleep(0.25)


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


async def stage_latencies(redis: Redis, jobs: set[str]) -> dict[str, list[int]]:
    """Per stage, ms from its result's entry to the next task's entry (composer: ``completed``)."""
    keys = Keys(NAMESPACE)
    results: dict[tuple[str, str], int] = {}
    for stream in keys.results_streams():
        for e in await read_range(redis, stream, limit=10_000_000):
            msg = result_decoder.decode(e.payload)
            if isinstance(msg, StageResult) and msg.job_id in jobs:
                results[(msg.job_id, msg.stage)] = _ms(e.entry_id)
    tasks: dict[tuple[str, str], int] = {}
    for stage in STAGES:
        for stream in keys.stage_streams(stage):
            for e in await read_range(redis, stream, limit=10_000_000):
                task = task_decoder.decode(e.payload)
                if task.job_id in jobs:
                    tasks[(task.job_id, stage)] = _ms(e.entry_id)
    completed: dict[str, int] = {}
    for job in jobs:
        for e in await read_range(redis, keys.job_events_stream(job)):
            if decode_event(e.payload).event == "completed":
                completed[job] = _ms(e.entry_id)
    out: dict[str, list[int]] = defaultdict(list)
    for job in jobs:
        for i, stage in enumerate(STAGES):
            got = results.get((job, stage))
            nxt = tasks.get((job, STAGES[i + 1])) if i + 1 < len(STAGES) else completed.get(job)
            if got is not None and nxt is not None:
                out[stage].append(nxt - got)
            if got is not None and (job, stage) in tasks:
                out[f"worker:{stage}"].append(got - tasks[(job, stage)])
    return out


def pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return float(s[min(int(len(s) * q), len(s) - 1)]) if s else float("nan")


async def one_run(
    infra: Infra,
    replicas: int,
    args: argparse.Namespace,
    logs: Path,
    profile: Path | None,
    base: Path | None = None,
    variant_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    redis = Redis.from_url(infra.redis.url)
    await redis.flushall()
    pg = await asyncpg.connect(infra.database_url)
    if await pg.fetchval("SELECT to_regclass('jobs') IS NOT NULL"):
        await pg.execute(f"TRUNCATE {TABLES} CASCADE")
    # The admission door off unless --env sets it: this measures the control plane's cost per job,
    # and on a loaded machine the door would rightly refuse some paced uploads.
    env = {"ADMISSION_MAX_WAIT_SECONDS": "0"} | dict(kv.split("=", 1) for kv in args.env) | (variant_env or {})
    svc = Services(infra, replicas, args.workers, logs, env, base)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        svc.start()
        for _ in range(600):  # bounded: 60 s
            if int(await redis.get(f"{GO}:ready") or 0) >= args.workers:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"instant workers not ready (see {logs})")
        meter = Meter(pg, redis, infra, svc)
        base = f"http://127.0.0.1:{svc.gateway_port}"
        wav = tiny_wav()
        run_tag = f"{replicas}-{time.time_ns()}"
        # warm-up: a few jobs through the whole pipeline path is not possible before the go, so
        # only the upload path is warmed (connections, imports, JIT-free caches)
        await upload_all(base, wav, [f"warm-{run_tag}-{i}" for i in range(10)], args.upload_concurrency)

        upload_spies = []
        if profile is not None:  # the uploads: the gateway and the first orchestrator
            targets = [("gateway", svc.gateway), ("orchestrator", svc.orchestrators[0])]
            upload_spies = [_spy(p.pid, profile / f"upload-{name}-{replicas}r.txt") for name, p in targets if p]
            await asyncio.sleep(1.0)
        s0 = await meter.snapshot()
        t0 = time.perf_counter()
        drain_jobs = await upload_all(
            base, wav, [f"u-{run_tag}-{i}" for i in range(args.jobs)], args.upload_concurrency
        )
        upload_wall = time.perf_counter() - t0
        s1 = await meter.snapshot()
        for spy in upload_spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)

        if profile is not None:
            for i, p in enumerate(svc.orchestrators[:1]):
                spies.append(_spy(p.pid, profile / f"orchestrator-{replicas}r-{i + 1}.txt"))
            await asyncio.sleep(1.0)
        before = await meter.snapshot()
        go = time.time()
        await redis.set(GO, "1")
        total = args.jobs + 10
        await wait_finished(meter, total, 600)
        done_at = time.time()
        for s in spies:
            s.send_signal(signal.SIGINT)
        after = await meter.snapshot()
        completed = int(await pg.fetchval("SELECT count(*) FROM jobs WHERE status = 'completed'"))
        meter.own_queries += 1
        if completed != total:
            raise RuntimeError(f"{total - completed} jobs did not complete (see {logs})")
        last = await pg.fetchval("SELECT extract(epoch FROM max(completed_at)) FROM jobs")
        meter.own_queries += 1
        drain_lat = await stage_latencies(redis, set(drain_jobs))

        paced_lat: dict[str, list[int]] = {}
        if args.paced:
            paced = await upload_all(base, wav, [f"p-{run_tag}-{i}" for i in range(args.paced)], 4, rate=args.rate)
            await wait_finished(meter, total + args.paced, 120)
            paced_lat = await stage_latencies(redis, set(paced))
    finally:
        for s in spies:
            if s.poll() is None:
                s.send_signal(signal.SIGINT)
            try:
                s.wait(30)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()
        svc.stop()
        await pg.close()
        await redis.aclose()

    up, dr = delta(s0, s1), delta(before, after)
    n = args.jobs
    wall = float(last) - go if last else done_at - go
    row: dict[str, Any] = {
        "replicas": replicas,
        "uploads_s": n / upload_wall,
        "upload_ms_gateway_cpu": 1000 * up["gateway"] / n,
        "upload_ms_orchestrator_cpu": 1000 * up["orchestrator"] / n,  # with its ffmpeg children
        "upload_ms_orchestrator_self_cpu": 1000 * up["orchestrator_self"] / n,
        "upload_ms_postgres_cpu": 1000 * up["postgres"] / n,
        "upload_xacts": up["xacts"] / n,
        "jobs_s": total / wall,
        "xacts_per_job": dr["xacts"] / total,
        "orchestrator_ms_per_job": 1000 * dr["orchestrator"] / total,
        "orchestrator_1_ms_per_job": 1000 * dr["orchestrator_1"] / total,
        "orchestrator_sys_share": dr["orchestrator_sys"] / dr["orchestrator"],
        "idle_xacts_per_s": (before["xacts"] - s1["xacts"]) / (before["t"] - s1["t"]),
        "postgres_ms_per_job": 1000 * dr["postgres"] / total,
        "redis_ms_per_job": 1000 * dr["redis"] / total,
        "workers_ms_per_job": 1000 * dr["workers"] / total,
        "orchestrator_busy": dr["orchestrator"] / wall / replicas,  # share of a core per replica
        "load1": os.getloadavg()[0],
    }
    row["ceiling_one_process_jobs_s"] = 1000 / row["orchestrator_ms_per_job"]
    for name, lat in (("drain", drain_lat), ("paced", paced_lat)):
        for stage, values in lat.items():
            row[f"{name}_p50_ms:{stage}"] = pct(values, 0.5)
            row[f"{name}_p99_ms:{stage}"] = pct(values, 0.99)
    return row


async def _receiver_stats(url: str) -> dict[str, Any]:
    with contextlib.suppress(Exception):
        async with aiohttp.ClientSession() as http, http.get(f"{url}/_stats") as r:
            return dict(await r.json())
    return {}


def fmt(v: float, d: int = 1) -> str:
    return f"{v:,.{d}f}"


async def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=600, help="jobs per drain")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--workers", type=int, default=2, help="instant-stage processes")
    p.add_argument("--upload-concurrency", type=int, default=8)
    p.add_argument("--paced", type=int, default=100, help="jobs uploaded at --rate after the drain (0: none)")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--profile", type=Path, default=None)
    p.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for every service, e.g. RESULTS_CONCURRENCY=32"
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--base", type=Path, default=None, help="a checkout to measure as the before figure, interleaved")
    p.add_argument("--keep", action="store_true", help="keep the logs and data directory")
    p.add_argument(
        "--traced",
        action="store_true",
        help="also each replica count with tracing on (OTLP/HTTP to a receiver process), interleaved",
    )
    p.add_argument(
        "--traced-variant",
        action="append",
        default=[],
        help="LABEL:KEY=VALUE;KEY=VALUE: one more traced variant, e.g. 'sampled-10pct:OTEL_TRACES_SAMPLER="
        "parentbased_traceidratio;OTEL_TRACES_SAMPLER_ARG=0.1'",
    )
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-control-plane-"))
    infra = Infra(root)
    replica_counts = [int(x) for x in args.replicas.split(",")]
    variants: list[tuple[str, int, Path | None, dict[str, str]]] = []
    receiver: subprocess.Popen[bytes] | None = None
    traced_env: dict[str, str] = {}
    more_traced = []  # parsed before the receiver starts: a typo must not leave it running
    for spec in args.traced_variant:
        label, _, pairs = spec.partition(":")
        more_traced.append((label, dict(kv.split("=", 1) for kv in pairs.split(";") if kv)))
    if args.traced:
        port = free_port()
        receiver = subprocess.Popen(
            [sys.executable, "-m", "montage_dev.fakes.otlp", "--port", str(port), "--quiet"], start_new_session=True
        )
        wait_port("127.0.0.1", port, time.monotonic() + 30)
        # the SDK's defaults otherwise (batches of 512 every 5 s, a queue of 2,048)
        traced_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    for r in replica_counts:
        if args.base is not None:
            base_sources(args.base)
            variants.append((f"base {r}", r, args.base, {}))
        variants.append((str(r), r, None, {}))
        if args.traced:
            variants.append((f"{r} traced", r, None, traced_env))
            for label, more in more_traced:
                variants.append((f"{r} traced {label}", r, None, traced_env | more))
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _, _ in variants}
    loads = [os.getloadavg()[0]]
    try:
        infra.start()
        pg = await asyncpg.connect(infra.database_url)
        settings = {
            k: await pg.fetchval(f"SHOW {k}")
            for k in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
        await pg.close()
        print("postgres: " + json.dumps(settings), flush=True)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for r in replica_counts:
                logs = root / f"profile-{r}"
                logs.mkdir()
                row = await one_run(infra, r, args, logs, args.profile)
                print(f"profiled, {r} replica(s), not counted: jobs/s {row['jobs_s']:.0f}", flush=True)
        for run in range(args.runs):
            for label, r, base, variant_env in variants:
                logs = root / f"run{run + 1}-{label.replace(' ', '-')}"
                logs.mkdir()
                row = await one_run(infra, r, args, logs, None, base, variant_env)
                rows[label].append(row)
                loads.append(row["load1"])
                print(
                    f"run {run + 1}, {label} replica(s): " + json.dumps({k: round(v, 2) for k, v in row.items()}),
                    flush=True,
                )
    finally:
        infra.stop()
        if receiver is not None:
            received = await _receiver_stats(traced_env["OTEL_EXPORTER_OTLP_ENDPOINT"])
            print(f"OTLP receiver: {received}", flush=True)
            os.killpg(receiver.pid, signal.SIGTERM)
            receiver.wait()
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and data kept in {root}")

    med = {r: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for r, rs in rows.items() if rs}
    print(f"\n{args.jobs} jobs per drain, {args.workers} instant-stage processes, medians of {args.runs}; "
          f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}, median {statistics.median(loads):.1f}")  # fmt: skip
    print(
        "\n| orchestrators | jobs/s | Postgres xacts per job | orchestrator CPU ms per job | 1 / that (jobs/s per core) "
        "| orchestrator busy (cores per replica) | Postgres CPU ms per job | Redis CPU ms per job | instant workers CPU ms per job |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, m in med.items():
        print(f"| {r} | {fmt(m['jobs_s'], 0)} | {fmt(m['xacts_per_job'])} | {fmt(m['orchestrator_ms_per_job'], 2)} "
              f"| {fmt(m['ceiling_one_process_jobs_s'], 0)} | {fmt(m['orchestrator_busy'], 2)} | {fmt(m['postgres_ms_per_job'], 2)} "
              f"| {fmt(m['redis_ms_per_job'], 2)} | {fmt(m['workers_ms_per_job'], 2)} |")  # fmt: skip
    for r, m in med.items():
        print(
            f"{r} replica(s): {100 * m['orchestrator_sys_share']:.0f} % of the orchestrator's CPU in the kernel; "
            f"idle background {m['idle_xacts_per_s']:.1f} Postgres xacts/s (sweeper, reconciler)"
        )
    print(
        "\n| orchestrators | uploads/s | gateway CPU ms per upload | orchestrator CPU ms per upload: with ffmpeg / without "
        "| Postgres CPU ms per upload | Postgres xacts per upload |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r, m in med.items():
        print(f"| {r} | {fmt(m['uploads_s'], 0)} | {fmt(m['upload_ms_gateway_cpu'], 2)} "
              f"| {fmt(m['upload_ms_orchestrator_cpu'], 2)} / {fmt(m['upload_ms_orchestrator_self_cpu'], 2)} "
              f"| {fmt(m['upload_ms_postgres_cpu'], 2)} | {fmt(m['upload_xacts'])} |")  # fmt: skip
    print(
        "\nlatency the orchestrator adds per stage (result entry -> next task entry; composer -> completed), ms p50 / p99:"
    )
    print("| orchestrators | phase | " + " | ".join(STAGES) + " | worker hop (task -> result), " + STAGES[1] + " |")
    print("|---:|---|" + "---:|" * (len(STAGES) + 1))
    for r, m in med.items():
        for phase in ("paced", "drain"):
            if f"{phase}_p50_ms:{STAGES[0]}" not in m:
                continue
            cells = [f"{m[f'{phase}_p50_ms:{s}']:.0f} / {m[f'{phase}_p99_ms:{s}']:.0f}" for s in STAGES]
            w = f"worker:{STAGES[1]}"
            cells.append(f"{m[f'{phase}_p50_ms:{w}']:.0f} / {m[f'{phase}_p99_ms:{w}']:.0f}")
            print(f"| {r} | {phase} | " + " | ".join(cells) + " |")
    for r in replica_counts:
        for what, (before, after) in {
            "this checkout against --base": (rows.get(f"base {r}", []), rows.get(str(r), [])),
            "tracing on against off": (rows.get(str(r), []), rows.get(f"{r} traced", [])),
            **{
                f"tracing on ({label}) against off": (rows.get(str(r), []), rows[label])
                for label in rows
                if label.startswith(f"{r} traced ")
            },
        }.items():
            if not (before and after):
                continue
            print(f"\n{r} replica(s), {what}, per run (after / before):")
            for key in ("jobs_s", "xacts_per_job", "orchestrator_ms_per_job", "postgres_ms_per_job", "redis_ms_per_job",
                        "workers_ms_per_job", "uploads_s", "upload_ms_gateway_cpu", "upload_ms_orchestrator_cpu",
                        f"paced_p50_ms:{STAGES[1]}"):  # fmt: skip
                if key not in after[0] or key not in before[0]:
                    continue
                ratios = [a[key] / b[key] for a, b in zip(after, before, strict=False)]
                print(
                    f"  {key}: median {statistics.median(ratios):.2f}x (" + " / ".join(f"{x:.2f}" for x in ratios) + ")"
                )
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "medians": med, "loads": loads}, indent=2))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")
