"""Gateway benchmark: SSE delivery latency, memory per connection, and authenticated GET throughput.

    .venv/bin/python bench/sse_fanout.py [--sizes 1,1000,10000] [--events 300] [--rate 100]

Starts (as separate processes) a fake orchestrator, one gateway process and a client process
that opens N SSE connections with raw asyncio sockets (10 per job, the per-job cap). The bench
process then writes events exactly as the orchestrator does (``event_emit`` through
``StreamProducer``: XADD + PUBLISH in one script), each carrying its write time; the clients
record write→read latency. Uses REDIS_URL or an embedded Redis. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from montage_common.events import event_emit
from montage_common.redis import create_redis
from montage_contracts.api import MessageData
from montage_contracts.keys import Keys
from montage_dev.devstack import EmbeddedRedis
from montage_gateway.tokens import mint_dev_token
from montage_streams import StreamProducer

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SECRET = "bench-jwt-secret-" + "x" * 32
PER_JOB = 10


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# --- client process ------------------------------------------------------------------------
async def client_main(port: int, jobs: list[str], per_job: int, users: int) -> None:
    """Open len(jobs)*per_job SSE connections; print READY; record latencies until stdin says DONE."""
    latencies: list[float] = []
    ready = 0
    errors = 0
    tokens = [mint_dev_token(SECRET, f"bench-user-{u}", 7200) for u in range(users)]
    sem = asyncio.Semaphore(100)
    all_ready = asyncio.Event()
    total = len(jobs) * per_job

    async def one(i: int, job: str) -> None:
        nonlocal ready, errors
        async with sem:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                req = (
                    f"GET /api/v1/jobs/{job}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {tokens[i % users]}\r\nAccept: text/event-stream\r\n\r\n"
                )
                writer.write(req.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
                    print(f"ERR {head[:60]!r}", file=sys.stderr, flush=True)
                    return
                await reader.readuntil(b"\n\n")  # the state event (chunk framing is skipped below)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors += 1
                print(f"ERR {exc!r}", file=sys.stderr, flush=True)
                return
        ready += 1
        if ready + errors == total:
            all_ready.set()
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            now = time.time_ns()
            buf += data
            while (cut := buf.find(b"\n\n")) >= 0:
                msg, buf = buf[:cut], buf[cut + 2 :]
                at = msg.find(b'"text":"bench ')
                if at >= 0 and b"event: message" in msg:
                    end = msg.find(b'"', at + 14)
                    latencies.append((now - int(msg[at + 14 : end])) / 1e6)

    tasks = [asyncio.create_task(one(i, jobs[i // per_job])) for i in range(total)]
    await all_ready.wait()
    print(f"READY {ready} {errors}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # DONE
    print("RESULT " + json.dumps({"latencies": latencies}), flush=True)
    for t in tasks:
        t.cancel()


# --- orchestration -------------------------------------------------------------------------
async def emit_events(redis_url: str, keys: Keys, jobs: list[str], events: int, rate: float) -> None:
    redis = create_redis(redis_url)
    producer = StreamProducer(redis)
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(events):
        job = jobs[i % len(jobs)]
        await producer.emit([event_emit(keys, job, MessageData(text=f"bench {time.time_ns()}", stage="audio_parser"))])
        delay = start + (i + 1) * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await redis.aclose()


async def throughput(port: int, seconds: float, concurrency: int = 32) -> float:
    headers = {"Authorization": f"Bearer {mint_dev_token(SECRET, 'bench-user-0', 3600)}"}
    job = str(uuid.uuid4())
    done = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers=headers) as s:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                async with s.get(f"http://127.0.0.1:{port}/api/v1/jobs/{job}") as r:
                    await r.read()
                    assert r.status == 200, r.status
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


def wait_http(port: int, path: str, tries: int = 300) -> None:
    import urllib.error
    import urllib.request

    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not come up")


def run_size(n: int, args: argparse.Namespace, redis_url: str, gw_port: int, gw_pid: int, ns: str) -> dict[str, Any]:
    keys = Keys(ns)
    n_jobs = max(1, n // PER_JOB)
    per_job = min(n, PER_JOB)
    jobs = [str(uuid.uuid4()) for _ in range(n_jobs)]
    users = max(1, n_jobs)
    time.sleep(1.0)
    base = rss_kib(gw_pid)
    clients = subprocess.Popen(
        [PY, __file__, "--role", "clients", "--port", str(gw_port), "--per-job", str(per_job), "--users", str(users)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert clients.stdin and clients.stdout
    clients.stdin.write(json.dumps(jobs) + "\n")
    clients.stdin.flush()
    t0 = time.perf_counter()
    line = clients.stdout.readline().split()
    setup = time.perf_counter() - t0
    ready, errors = int(line[1]), int(line[2])
    time.sleep(1.0)
    rss = rss_kib(gw_pid)
    events = max(args.events, 1)
    asyncio.run(emit_events(redis_url, keys, jobs, events, args.rate))
    time.sleep(1.0)
    clients.stdin.write("DONE\n")
    clients.stdin.flush()
    result = json.loads(clients.stdout.readline().removeprefix("RESULT "))
    clients.wait()
    lat = result["latencies"]
    return {
        "connections": ready,
        "errors": errors,
        "setup_s": round(setup, 1),
        "deliveries": len(lat),
        "expected": events * per_job,
        "p50_ms": round(pct(lat, 50), 2),
        "p99_ms": round(pct(lat, 99), 2),
        "max_ms": round(max(lat), 2) if lat else None,
        "rss_mib": round(rss / 1024, 1),
        "kib_per_conn": round((rss - base) / max(ready, 1), 1),
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--per-job", type=int, default=PER_JOB)
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--sizes", default="1,1000,10000")
    parser.add_argument("--events", type=int, default=300, help="events written per size")
    parser.add_argument("--rate", type=float, default=100.0, help="events written per second")
    parser.add_argument("--throughput-seconds", type=float, default=5.0)
    args = parser.parse_args()
    raise_nofile()
    if args.role == "clients":
        jobs = json.loads(sys.stdin.readline())
        asyncio.run(client_main(args.port, jobs, args.per_job, args.users))
        return

    redis_url = os.environ.get("REDIS_URL")
    server = None
    if not redis_url:
        server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        redis_url = server.start()
    ns = f"bench{uuid.uuid4().hex[:8]}"
    orch_port, gw_port, gw_ops_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
        "REDIS_URL": redis_url,
        "REDIS_NAMESPACE": ns,
        "PORT": str(gw_port),
        "OPS_PORT": str(gw_ops_port),
        "ORCHESTRATOR_URL": f"http://127.0.0.1:{orch_port}",
        "SUPABASE_JWT_SECRET": SECRET,
        "SSE_MAX_PER_USER": "100",
        "GUARD_USER_REQUESTS": "100000000",
        "GUARD_IP_REQUESTS": "100000000",
        "MAX_CONNECTIONS_PER_CLIENT": "0",  # every client is 127.0.0.1
        "SSE_QUEUE_SIZE": "256",
    }
    log_path = Path(tempfile.gettempdir()) / "bench-gateway.log"
    print(f"gateway log: {log_path}", flush=True)
    procs = [
        subprocess.Popen(
            [PY, str(ROOT / "tests/gateway/fake_orchestrator.py"), "--port", str(orch_port), "--any-job"], env=env
        ),
        subprocess.Popen([PY, "-m", "montage_gateway"], env=env, stderr=open(log_path, "w")),  # noqa: SIM115
    ]
    try:
        wait_http(orch_port, "/internal/health")
        wait_http(gw_ops_port, "/readyz")
        gw_pid = procs[1].pid
        rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            row = run_size(n, args, redis_url, gw_port, gw_pid, ns)
            print(json.dumps(row), flush=True)
            rows.append(row)
        rps = asyncio.run(throughput(gw_port, args.throughput_seconds))
        print(json.dumps({"get_job_rps": round(rps)}), flush=True)
        print("\n| connections | p50 ms | p99 ms | max ms | delivered/expected | gateway RSS MiB | KiB/conn |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['connections']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
                f"{r['deliveries']}/{r['expected']} | {r['rss_mib']} | {r['kib_per_conn']} |"
            )
        print(f"\nGET /api/v1/jobs/{{id}} with auth: {rps:.0f} req/s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)  # the gateway first ends its SSE streams
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
