"""The operator view: per-stage stream length, pending entries, lag, dead letters, live consumers.

Reads Redis directly (``REDIS_URL``, or the one ``var/stack.env`` names), never writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from montage_contracts.keys import ORCHESTRATOR_GROUP, Keys
from montage_contracts.pipeline import STAGES
from montage_streams import group_stats
from redis.asyncio import Redis


@dataclass(frozen=True)
class QueueRow:
    stream: str
    group: str
    length: int
    pending: int
    lag: int | None
    dead_letters: int
    consumers: int
    live_workers: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _live_workers(redis: Redis, keys: Keys, stage: str) -> int:
    pattern = keys.worker_heartbeat(stage, "*")
    count = 0
    async for _ in redis.scan_iter(match=pattern, count=500):
        count += 1
    return count


async def _row(redis: Redis, keys: Keys, name: str, stream: str, group: str, *, live: int) -> QueueRow:
    stats = await group_stats(redis, stream, group, dead_letter_stream=keys.dead_letter_stream(stream))
    return QueueRow(
        stream=name,
        group=group,
        length=stats.length,
        pending=stats.pending,
        lag=stats.lag if stats.exists else None,
        dead_letters=stats.dead_letters,
        consumers=stats.consumers,
        live_workers=live,
    )


async def snapshot(redis: Redis, keys: Keys) -> dict[str, Any]:
    """Every stage stream, video_generator's clip stream and the results stream, in every
    partition (``REDIS_PARTITIONS``: rows named ``<stream>#<k>`` when there are several), plus the
    retries waiting for their backoff."""
    many = len(keys.all_partitions) > 1

    def name(base: str, partition: int) -> str:
        return f"{base}#{partition}" if many else base

    live = {stage: await _live_workers(redis, keys, stage) for stage in STAGES}
    rows: list[QueueRow] = []
    for p in keys.all_partitions:
        for stage in STAGES:
            rows.append(
                await _row(redis, keys, name(stage, p), keys.stage_stream(stage, p), keys.stage_group(stage),
                           live=live[stage])
            )  # fmt: skip
        # the clips of the jobs' video_generator stage, rendered by every video_generator process
        rows.append(
            await _row(redis, keys, name("clips", p), keys.clip_stream(p), keys.clip_group(),
                       live=live["video_generator"])
        )  # fmt: skip
        rows.append(await _row(redis, keys, name("results", p), keys.results_stream(p), ORCHESTRATOR_GROUP, live=-1))
    delayed = sum([int(await redis.zcard(z)) for z in keys.delayed_zsets()])
    return {"namespace": keys.namespace, "queues": [r.as_dict() for r in rows], "delayed_retries": delayed}


def format_table(snap: dict[str, Any]) -> str:
    head = f"{'stream':<20} {'length':>7} {'pending':>8} {'lag':>6} {'dead':>6} {'consumers':>10} {'live':>5}"
    lines = [f"namespace {snap['namespace']}", head, "─" * len(head)]
    for q in snap["queues"]:
        lag = "-" if q["lag"] is None else str(q["lag"])
        live = "-" if q["live_workers"] < 0 else str(q["live_workers"])
        lines.append(
            f"{q['stream']:<20} {q['length']:>7} {q['pending']:>8} {lag:>6} {q['dead_letters']:>6} "
            f"{q['consumers']:>10} {live:>5}"
        )
    lines.append(f"retries waiting for backoff: {snap['delayed_retries']}")
    return "\n".join(lines)
