"""Fair turns and the start forecast as pure functions: no I/O, tested without Postgres or Redis.

A job waits for its turn in Postgres (``queued``, no deadline, no task in any stream) while its
user already has ``USER_MAX_ACTIVE_JOBS`` jobs processing. :mod:`montage_orchestrator.admission`
reads the waiting and the active jobs under one lock and applies these decisions:

- :func:`line_order`: the order turns are given in: round robin over users (each user's first
  waiting job, then each user's second, …; users with the oldest waiting job first), oldest first
  within a user;
- :func:`pick_turns`: which waiting jobs start now (their user has a free slot);
- :func:`forecast`: when each waiting job, and a job uploaded now, would start, from the work
  ahead of it (each stage's duration for each job and the live slots per stage), by simulating
  the stages' queues; the door (``ADMISSION_MAX_WAIT_SECONDS``) and ``estimated_start`` read it.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from montage_contracts.pipeline import STAGES

# A job uploaded now, in :func:`forecast`: its id in the answer.
NEW_JOB = "new"


@dataclass(frozen=True, slots=True)
class Waiting:
    """A job waiting for its turn. ``seconds``: what each stage would take for it (stage order)."""

    job_id: str
    user_id: str
    created_at: datetime
    seconds: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Running:
    """A job holding a slot: in ``stage`` for ``elapsed`` seconds; ``seconds`` as in :class:`Waiting`."""

    job_id: str
    user_id: str
    stage: str
    elapsed: float
    seconds: tuple[float, ...]


def line_order(waiting: Sequence[Waiting]) -> list[Waiting]:
    """Round robin over users (the user whose oldest job waits longest first), oldest first within each."""
    by_user: dict[str, list[Waiting]] = defaultdict(list)
    for w in sorted(waiting, key=lambda w: (w.created_at, w.job_id)):
        by_user[w.user_id].append(w)
    users = sorted(by_user, key=lambda u: (by_user[u][0].created_at, u))  # dicts keep insertion order
    return [
        by_user[u][rank]
        for rank in range(max((len(v) for v in by_user.values()), default=0))
        for u in users
        if rank < len(by_user[u])
    ]


def pick_turns(waiting: Sequence[Waiting], active: Mapping[str, int], per_user: int) -> list[Waiting]:
    """The waiting jobs that start now, in line order: each while its user holds fewer than ``per_user``."""
    held = dict(active)
    chosen: list[Waiting] = []
    for w in line_order(waiting):
        if held.get(w.user_id, 0) < per_user:
            held[w.user_id] = held.get(w.user_id, 0) + 1
            chosen.append(w)
    return chosen


@dataclass(slots=True)
class Forecast:
    """Seconds from now until each waiting job's first stage is taken by a worker (``starts``), and
    each one's place in line (1 = next); :data:`NEW_JOB` when a new job was asked about."""

    starts: dict[str, float] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)


def forecast(
    running: Sequence[Running],
    waiting: Sequence[Waiting],
    slots: Mapping[str, int],
    per_user: int,
    new_user: str | None = None,
) -> Forecast:
    """Simulate the stages as FIFO queues, each served by ``slots[stage]`` (at least 1) at once.

    At the start the running jobs hold the slots of their stage (the longest there first, each for
    what is left of its duration), the others of that stage queue behind them; a waiting job joins
    the first stage when its user holds fewer than ``per_user`` jobs (a job of the user ends); a new
    job of ``new_user`` waits behind every job already there. Cheap: a few events per job and stage.
    """
    n_stages = len(STAGES)
    free = {i: [0.0] * max(1, slots.get(stage, 1)) for i, stage in enumerate(STAGES)}
    order = itertools.count()
    events: list[tuple[float, int, int, str]] = []  # (time, seq, stage index or -1 for done, job)
    seconds: dict[str, tuple[float, ...]] = {}
    owner: dict[str, str] = {}
    held: dict[str, int] = defaultdict(int)
    for stage_index, stage in enumerate(STAGES):
        here = sorted((r for r in running if r.stage == stage), key=lambda r: -r.elapsed)
        workers = free[stage_index]
        for k, r in enumerate(here):
            seconds[r.job_id], owner[r.job_id] = r.seconds, r.user_id
            held[r.user_id] += 1
            if k < len(workers):  # in service: its slot frees when what is left of the stage is done
                end = max(0.0, r.seconds[stage_index] - r.elapsed)
                workers[k] = end
                heapq.heappush(events, (end, next(order), stage_index + 1, r.job_id))
            else:  # queued in the stream behind the ones in service
                heapq.heappush(events, (0.0, next(order), stage_index, r.job_id))
        heapq.heapify(workers)
    line = line_order(waiting)
    if new_user is not None:
        typical = line[0].seconds if line and line[0].seconds else tuple(1.0 for _ in STAGES)
        line.append(Waiting(NEW_JOB, new_user, datetime.max, typical))
    out = Forecast(positions={w.job_id: i for i, w in enumerate(line, start=1)})
    queues: dict[str, deque[Waiting]] = defaultdict(deque)
    for w in line:
        seconds[w.job_id], owner[w.job_id] = w.seconds or tuple(0.0 for _ in STAGES), w.user_id
        queues[w.user_id].append(w)

    def admit(user: str, now: float) -> None:
        while queues[user] and held[user] < per_user:
            w = queues[user].popleft()
            held[user] += 1
            heapq.heappush(events, (now, next(order), 0, w.job_id))

    for user in list(queues):
        admit(user, 0.0)
    while events and len(out.starts) < len(line):
        now, _, stage_index, job = heapq.heappop(events)
        if stage_index >= n_stages:  # the job is done: its user's next job may start
            held[owner[job]] -= 1
            admit(owner[job], now)
            continue
        start = max(now, heapq.heappop(free[stage_index]))
        end = start + seconds[job][stage_index]
        heapq.heappush(free[stage_index], end)
        if stage_index == 0 and job in out.positions:
            out.starts[job] = start
        heapq.heappush(events, (end, next(order), stage_index + 1, job))
    return out


def retry_after(predicted_wait: float, max_wait: float) -> int:
    """Seconds until a job uploaded then would wait no longer than ``max_wait`` (the work ahead
    drains as time passes); at least 1, and at most ``max_wait``: the forecast is read again on
    every upload (workers added, measured rates replacing the priors), so no client is sent away
    for longer than a job may wait."""
    return max(1, min(int(predicted_wait - max_wait + 0.999), int(max_wait)))
