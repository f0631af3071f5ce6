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
    """Every stage stream and the results stream, plus retries waiting for their backoff."""
    rows = [
        await _row(redis, keys, stage, keys.stage_stream(stage), keys.stage_group(stage),
                   live=await _live_workers(redis, keys, stage))
        for stage in STAGES
    ]  # fmt: skip
    rows.append(await _row(redis, keys, "results", keys.results_stream(), ORCHESTRATOR_GROUP, live=-1))
    delayed = int(await redis.zcard(keys.delayed_zset()))
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
