"""The six-stage no-op pipeline on one Redis and on a 3-primary Redis Cluster (P = 1, 3, 6).

Montage's stream runtime as the services use it: every stage is a ``StreamConsumer`` per
partition, the hand-off of stage i emits the task of stage i+1 in the same partition
(``montage_contracts.keys``: one hash tag per partition), the last stage emits to the partition's
``done`` stream with the job's send time. ``--workers`` worker processes each run all six
stages (one consumer per stage per partition, concurrency 3 per stage as the workers'
default, shared out over the partitions); the producer sends ``--jobs`` jobs as fast as it
can, each to the partition its id hashes to. Per configuration and run: throughput (jobs/s,
first send to last done) and latency p50/p95 (send → done), and how the entries spread over
the cluster's primaries. Medians over ``--runs`` runs.

    .venv/bin/python bench/redis_cluster.py --jobs 3000 --runs 3

On 2 cores a cluster is not faster: four redis-servers and the workers share the same CPUs.
The figures show the client-side overhead of the cluster (routing, one connection pool per
node, one consumer per partition) and that the work spreads over the shards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from montage_common.redis import RedisTarget, create_redis, ready
from montage_contracts.keys import Keys
from montage_dev.devstack import EmbeddedCluster, EmbeddedRedis
from montage_streams import Delivery, Emit, StreamConsumer, StreamProducer

STAGES = 6
CONCURRENCY = 3
NAMESPACE = "bench"


def stage_stream(keys: Keys, i: int, p: int) -> str:
    return keys.stage_stream(f"s{i}", p)


def done_stream(keys: Keys, p: int) -> str:
    return f"{keys.partition_tag(p)}:done"


async def worker(target: RedisTarget, partitions: int) -> None:
    redis = create_redis(target, socket_timeout=10.0)
    await ready(redis)
    keys = Keys(NAMESPACE, partitions)
    per = max(1, math.ceil(CONCURRENCY / partitions))

    def handler(i: int, p: int):  # type: ignore[no-untyped-def]
        nxt = done_stream(keys, p) if i == STAGES - 1 else stage_stream(keys, i + 1, p)
        last = i == STAGES - 1

        async def handle(d: Delivery) -> Sequence[Emit]:
            extra = (("t1", repr(time.time())),) if last else ()
            return [Emit(nxt, d.payload, d.message_id, extra=extra)]

        return handle

    consumers = [
        StreamConsumer(redis, stage_stream(keys, i, p), f"g{i}", handler(i, p), keys, concurrency=per)
        for i in range(STAGES)
        for p in keys.all_partitions
    ]

    def stop_all() -> None:
        for c in consumers:
            c.stop()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_all)
    await asyncio.gather(*(c.run() for c in consumers))
    await redis.aclose()


async def produce(target: RedisTarget, partitions: int, jobs: int) -> None:
    redis = create_redis(target)
    keys = Keys(NAMESPACE, partitions)
    producer = StreamProducer(redis)
    for _ in range(jobs):
        job = uuid.uuid4().hex
        p = keys.partition_of(job)
        await producer.emit([Emit(stage_stream(keys, 0, p), repr(time.time()).encode(), job)])
    await redis.aclose()


async def collect(target: RedisTarget, partitions: int, jobs: int, limit: float) -> list[tuple[float, float]] | None:
    """Wait for ``jobs`` done entries; their (t0, t1)."""
    redis = create_redis(target)
    keys = Keys(NAMESPACE, partitions)
    r: Any = redis
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            total = sum([int(await r.xlen(done_stream(keys, p))) for p in keys.all_partitions])
            if total >= jobs:
                break
            await asyncio.sleep(0.05)
        else:
            return None
        out: list[tuple[float, float]] = []
        for p in keys.all_partitions:
            for _id, fields in await r.xrange(done_stream(keys, p)):
                out.append((float(fields[b"m"]), float(fields[b"t1"])))
        return out
    finally:
        await redis.aclose()


def spread(cluster: EmbeddedCluster | None) -> list[int]:
    """Keys of the bench namespace on each primary."""
    if cluster is None:
        return []
    import redis as redis_sync

    counts = []
    for node in cluster.nodes:
        c = redis_sync.Redis(port=node.port)
        try:
            counts.append(sum(1 for _ in c.scan_iter(match="{bench*", count=1000)))
        finally:
            c.close()
    return counts


def one_run(target: RedisTarget, partitions: int, args: argparse.Namespace, cluster: EmbeddedCluster | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    spec = json.dumps({"url": target.url, "cluster": target.cluster, "partitions": partitions})
    workers = [
        subprocess.Popen([sys.executable, __file__, "--role", "worker", "--spec", spec], env=env)
        for _ in range(args.workers)
    ]
    try:
        time.sleep(1.5)  # consumer groups created, blocking reads in place
        start = time.time()
        asyncio.run(produce(target, partitions, args.jobs))
        got = asyncio.run(collect(target, partitions, args.jobs, limit=600))
        if got is None:
            raise RuntimeError("the pipeline did not finish")
        end = max(t1 for _, t1 in got)
        lat = sorted(t1 - t0 for t0, t1 in got)
        return {
            "jobs_per_s": args.jobs / (end - start),
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p95_ms": 1000 * lat[int(len(lat) * 0.95)],
            "keys_per_primary": spread(cluster),
        }
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()


def flush(target: RedisTarget, cluster: EmbeddedCluster | None) -> None:
    import redis as redis_sync

    ports = [n.port for n in cluster.nodes] if cluster else [int(target.url.rsplit(":", 1)[1].split("/")[0])]
    for port in ports:
        c = redis_sync.Redis(port=port)
        try:
            c.flushall()
        finally:
            c.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--role", choices=["bench", "worker"], default="bench")
    p.add_argument("--spec", default="")
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="worker processes (each runs all six stages)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.role == "worker":
        spec = json.loads(args.spec)
        asyncio.run(worker(RedisTarget(spec["url"], cluster=spec["cluster"]), spec["partitions"]))
        return

    results: dict[str, dict] = {}
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    single = EmbeddedRedis(root / "single")
    cluster = EmbeddedCluster(root / "cluster", primaries=3)
    try:
        single.start()
        cluster.start()
        configs: list[tuple[str, RedisTarget, int, EmbeddedCluster | None]] = [
            ("one Redis, P=1", RedisTarget(single.url), 1, None),
            ("cluster, P=1", RedisTarget(cluster.url, cluster=True), 1, cluster),
            ("cluster, P=3", RedisTarget(cluster.url, cluster=True), 3, cluster),
            ("cluster, P=6", RedisTarget(cluster.url, cluster=True), 6, cluster),
        ]
        for run in range(args.runs):  # interleaved: slow drifts of the machine hit every config
            for name, target, partitions, cl in configs:
                flush(target, cl)
                row = one_run(target, partitions, args, cl)
                results.setdefault(name, {"runs": []})["runs"].append(row)
                print(f"run {run + 1} {name}: {row}", flush=True)
    finally:
        single.stop()
        cluster.stop()
    base = statistics.median(r["jobs_per_s"] for r in results["one Redis, P=1"]["runs"])
    print(f"\n{args.jobs} jobs x {args.runs} runs, {args.workers} worker processes, medians:")
    print("| configuration | jobs/s | vs one Redis | p50 ms | p95 ms | keys per primary (last run) |")
    print("|---|---|---|---|---|---|")
    for name, data in results.items():
        runs = data["runs"]
        tput = statistics.median(r["jobs_per_s"] for r in runs)
        data["median"] = {
            "jobs_per_s": tput,
            "ratio": tput / base,
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p95_ms": statistics.median(r["p95_ms"] for r in runs),
        }
        m = data["median"]
        spread_txt = " / ".join(map(str, runs[-1]["keys_per_primary"])) or "-"
        print(f"| {name} | {tput:.0f} | {m['ratio']:.2f} | {m['p50_ms']:.1f} | {m['p95_ms']:.1f} | {spread_txt} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
