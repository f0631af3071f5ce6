"""A job that ended (cancelled, failed, timed out) leaves no work in the streams.

When a job fails for any reason its cancel flag is set (:func:`transitions.job_failed`), and
right after the commit, before the cancel is answered, :func:`purge_job` removes every task of
the job still waiting in Redis: unread or pending in each stage stream of its partition and in
the clip stream (video_generator's fan-out), and retries of those streams waiting in the delayed
set (``montage_streams.discard``, one Lua script per call: nothing moves between the places it
looks). Tasks are found by their message id, whose prefix is the job id
(``dispatch_message_id``, ``clip_message_id``).

Two ways a task could still arrive after the cancel committed, and what closes them:

- a result of the job whose transaction committed just before the cancel's is being handed off
  (the next stage's task goes out atomically with the result's ack): while a result of the job is
  in flight in the results stream, the purge waits (bounded, ``SETTLE_SECONDS``) and runs again;
- an outbox entry of an earlier transaction not yet sent (a process died before sending it): the
  job's outbox entries are sent first (each once, under its row lock), then purged.

A worker already running a removed task finds its claim gone at its hand-off (nothing is
emitted) and stops at its next cancel check, which comes before every provider call.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog
from montage_contracts.keys import ORCHESTRATOR_GROUP
from montage_contracts.pipeline import STAGES
from montage_streams import REDIS_DOWN, discard, in_flight

from montage_orchestrator.deps import Deps

log = structlog.get_logger()

SETTLE_SECONDS = 2.0  # how long a purge waits for the job's results in flight to be handled
SETTLE_POLL_SECONDS = 0.05


def _sources(deps: Deps, partition: int) -> list[tuple[str, str]]:
    keys = deps.keys
    return [(keys.stage_stream(s, partition), keys.stage_group(s)) for s in STAGES] + [
        (keys.clip_stream(partition), keys.clip_group())
    ]


async def _send_outbox(deps: Deps, job_id: str) -> None:
    """Send the job's unsent outbox entries now, so none adds a task after the purge."""
    ids = await deps.pool.fetch("SELECT id FROM orchestrator_outbox WHERE job_id = $1 ORDER BY id", uuid.UUID(job_id))
    for row in ids:
        await deps.outbox.send_quietly(row["id"])


async def purge_job(deps: Deps, job_id: str, *, settle: bool = True) -> int:
    """Remove every task of ``job_id`` from Redis (see the module docstring); how many were removed.

    ``settle``: also wait for the job's results in flight (a cancel, a timeout); not when the
    caller is itself handling one of them (the pipeline failing the job on a result).
    Best effort against Redis being down (logged; the workers' cancel check still stops them).
    """
    keys = deps.keys
    partition = keys.partition_of(job_id)
    sources = _sources(deps, partition)
    delayed = keys.delayed_zsets()[partition]
    results = [(keys.results_stream(partition), ORCHESTRATOR_GROUP)]
    removed = 0
    try:
        await _send_outbox(deps, job_id)
        removed += await discard(deps.redis, sources, delayed, [job_id])
        deadline = time.monotonic() + (SETTLE_SECONDS if settle else 0.0)
        while time.monotonic() < deadline:  # bounded: SETTLE_SECONDS
            busy = await in_flight(deps.redis, results, delayed, [job_id])
            if busy is not None and job_id not in busy:
                break
            await asyncio.sleep(SETTLE_POLL_SECONDS)
            removed += await discard(deps.redis, sources, delayed, [job_id])
        if settle:
            removed += await discard(deps.redis, sources, delayed, [job_id])
    except REDIS_DOWN as exc:
        log.warning("job_purge_failed", job_id=job_id, error=str(exc)[:200])
        return removed
    if removed:
        log.info("job_tasks_purged", job_id=job_id, removed=removed)
    return removed
