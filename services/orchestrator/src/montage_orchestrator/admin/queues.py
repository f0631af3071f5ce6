"""The queues page: every stage's stream and group, its consumers and the workers' heartbeats.

Per stage (and the results stream): length, waiting (the group's lag) and the age of the oldest
waiting task, in flight (pending) and the age of the oldest, delayed retries (members of the
delayed set bound for that stream), dead letters, the group's consumers with their idle time
joined with the workers' heartbeat keys. Throughput and p95 come from the results stream itself:
each ``StageResult`` entry is a finished attempt of one stage (the entry id is when it finished,
``duration_seconds`` how long the worker's handler ran). :class:`ResultWindow` keeps a small
rolling record of them in this process, read incrementally (from the last entry it saw, bounded
per call), so a poll costs only the results added since the previous poll.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from montage_common.web import query_int
from montage_contracts import api
from montage_contracts.api import timestamp_ms
from montage_contracts.pipeline import STAGES
from montage_streams import consumer_stats, delayed_by_stream, group_stats, oldest_pending_age

from montage_orchestrator.admin.access import RESULTS, admin, stream_of
from montage_orchestrator.deps import Deps
from montage_orchestrator.http import respond

WINDOW_MAX_SECONDS = 3600


class _Peek(msgspec.Struct):
    """The fields of a results-stream payload the window needs (the rest is skipped)."""

    type: str = ""
    stage: str = ""
    ok: bool = False
    duration_seconds: float = 0.0


_peek = msgspec.json.Decoder(_Peek)


@dataclass(frozen=True, slots=True)
class StageStats:
    """A stage's finished attempts over a window."""

    completed: int = 0
    failed: int = 0
    throughput_per_minute: float = 0.0
    p95_seconds: float | None = None


class ResultWindow:
    """A rolling record of finished stage attempts: (finished ms, stage, ok, seconds)."""

    BATCH = 1000
    MAX_BATCHES = 20  # per refresh; the rest is read by the next one

    def __init__(self, keep_seconds: int = WINDOW_MAX_SECONDS) -> None:
        self.keep_ms = keep_seconds * 1000
        self.items: deque[tuple[int, str, bool, float]] = deque()
        self.last_id = ""
        self._lock = asyncio.Lock()

    async def refresh(self, deps: Deps) -> None:
        async with self._lock:
            now = int(time.time() * 1000)
            floor = now - self.keep_ms
            start = f"({self.last_id}" if self.last_id and int(self.last_id.split("-")[0]) >= floor else str(floor)
            r: Any = deps.redis
            for _ in range(self.MAX_BATCHES):
                rows = await r.xrange(deps.keys.results_stream(), min=start, count=self.BATCH)
                for raw_id, fields in rows:
                    eid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                    self.last_id = eid
                    try:
                        peek = _peek.decode(fields.get(b"m", b""))
                    except msgspec.DecodeError:
                        continue
                    if peek.type == "result":
                        self.items.append((int(eid.split("-")[0]), peek.stage, peek.ok, peek.duration_seconds))
                if len(rows) < self.BATCH:
                    break
                start = f"({self.last_id}"
            while self.items and self.items[0][0] < floor:
                self.items.popleft()

    def summary(self, window_seconds: int) -> dict[str, StageStats]:
        since = int(time.time() * 1000) - window_seconds * 1000
        per: dict[str, list[tuple[bool, float]]] = {}
        for ms, stage, ok, seconds in self.items:
            if ms >= since:
                per.setdefault(stage, []).append((ok, seconds))
        out: dict[str, StageStats] = {}
        minutes = window_seconds / 60
        for stage, rows in per.items():
            durations = sorted(s for _, s in rows)
            done = sum(1 for ok, _ in rows if ok)
            out[stage] = StageStats(
                completed=done,
                failed=len(rows) - done,
                throughput_per_minute=round(done / minutes, 3),
                p95_seconds=round(_p95(durations), 3) if durations else None,
            )
        return out


def _p95(sorted_values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    rank = max(int(-(-95 * len(sorted_values) // 100)), 1)
    return sorted_values[rank - 1]


async def _heartbeats(deps: Deps) -> dict[str, dict[str, float]]:
    """stage → consumer → seconds since its last heartbeat (live workers only: the keys expire)."""
    r: Any = deps.redis
    prefix = deps.keys.worker_heartbeat("", "").removesuffix(":")  # "<ns>:worker:"
    names: list[str] = []
    async for key in r.scan_iter(match=deps.keys.worker_heartbeat_pattern(), count=500):
        names.append(key.decode() if isinstance(key, bytes) else str(key))
        if len(names) >= 2000:
            break
    out: dict[str, dict[str, float]] = {}
    if not names:
        return out
    now = time.time()
    for name, value in zip(names, await r.mget(names), strict=True):
        stage, _, consumer = name[len(prefix) :].partition(":")
        try:
            age = max(now - float(value), 0.0) if value is not None else None
        except ValueError:
            age = None
        if age is not None:
            out.setdefault(stage, {})[consumer] = round(age, 1)
    return out


async def _queue_row(
    deps: Deps, name: str, delayed: dict[str, int], beats: dict[str, float], stats: StageStats
) -> api.AdminQueue:
    stream, group = stream_of(deps, name)
    g = await group_stats(deps.redis, stream, group, dead_letter_stream=deps.keys.dead_letter_stream(stream))
    consumers = await consumer_stats(deps.redis, stream, group)
    in_flight_age = await oldest_pending_age(deps.redis, stream, group) if g.pending else None
    rows = []
    seen = set()
    for c in consumers:
        seen.add(c.name)
        rows.append(
            api.AdminConsumer(
                name=c.name,
                pending=c.pending,
                idle_seconds=round(c.idle_ms / 1000, 1),
                heartbeat_age_seconds=beats.get(c.name),
                alive=c.name in beats if name != RESULTS else None,
            )
        )
    for consumer, age in beats.items():  # a live worker that has not joined the group yet
        if consumer not in seen:
            rows.append(
                api.AdminConsumer(name=consumer, pending=0, idle_seconds=None, heartbeat_age_seconds=age, alive=True)
            )
    return api.AdminQueue(
        name=name,
        stream=stream,
        group=group,
        length=g.length,
        waiting=g.waiting,
        oldest_waiting_seconds=round(g.oldest_unread_age, 1) if g.waiting else None,
        pending=g.pending,
        oldest_pending_seconds=round(in_flight_age, 1) if in_flight_age is not None else None,
        delayed=delayed.get(stream, 0),
        dead_letters=g.dead_letters,
        consumers=rows,
        workers_alive=len(beats) if name != RESULTS else None,
        completed=stats.completed,
        failed=stats.failed,
        throughput_per_minute=stats.throughput_per_minute,
        p95_seconds=stats.p95_seconds,
    )


async def queues(request: web.Request, record: ResultWindow) -> web.Response:
    deps, _ = admin(request)
    window = query_int(request, "window", 300, 60, WINDOW_MAX_SECONDS)
    await record.refresh(deps)
    stats = record.summary(window)
    delayed = await delayed_by_stream(deps.redis, deps.keys)
    beats = await _heartbeats(deps)
    stages = [
        await _queue_row(deps, stage, delayed, beats.get(stage, {}), stats.get(stage, StageStats())) for stage in STAGES
    ]
    results = await _queue_row(deps, RESULTS, delayed, {}, StageStats())
    return respond(
        api.AdminQueues(
            namespace=deps.keys.namespace,
            generated_at=timestamp_ms(int(time.time() * 1000)),
            window_seconds=window,
            stages=stages,
            results=results,
            delayed_total=sum(delayed.values()),
        )
    )
