"""The orchestrator's copy of job events into their users' logs (``GET /api/v1/events``).

The log and the copy itself are :mod:`montage_common.user_events`. This is who copies and when:

- **Right after a hand-off.** The results consumers (``StreamConsumer.on_handed_off``) and the
  outbox (after its ``XADD``s) call :meth:`UserEventRelay.notice` with what they just wrote; the
  jobs whose logs got events are copied at once by :meth:`run`'s loop (a live user stream sees
  an event a few milliseconds after the job stream does).
- **A sweep** every 10 s (and at start, over the last hour): the jobs
  still running and those changed lately are copied again, which appends only what a copy
  missed (a process killed between a hand-off and its copy, Redis unreachable for a moment).

A job's owner never changes: the upload that creates the job tells it (:meth:`UserEventRelay.remember`),
else it is read from Postgres once per job (one query for a batch), and kept (bounded). The jobs
noticed since the last copy are copied in one batch (``UserLog.relay_many``: two pipelined
round trips for all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import timedelta

import asyncpg
import structlog
from montage_common.user_events import UserLog
from montage_contracts.keys import Keys
from montage_streams import Emit
from redis.asyncio import Redis

log = structlog.get_logger()

_MARK = ":job_events:"
OWNERS_KEPT = 50_000
SWEEP_BATCH = 500  # jobs copied per batch (two pipelined round trips) by the sweep
START_WINDOW = timedelta(hours=1)  # at start: what a stopped orchestrator may not have copied


class UserEventRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        keys: Keys,
        *,
        sweep_seconds: float = 10.0,
        window_seconds: float = 120.0,
    ) -> None:
        self.pool = pool
        self.log = UserLog(redis, keys)
        self.sweep_seconds = sweep_seconds
        self.window = timedelta(seconds=window_seconds)
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._due: dict[str, None] = {}
        self._wake = asyncio.Event()

    def notice(self, emits: Sequence[Emit]) -> None:
        """Emits were written: copy the events of every job whose log they appended to."""
        for e in emits:
            at = e.stream.find(_MARK)
            if at >= 0:
                self._due[e.stream[at + len(_MARK) :]] = None
        if self._due:
            self._wake.set()

    def remember(self, job_id: str, user_id: str) -> None:
        """Keep a job's owner (bounded): told by the upload that creates it, so its first copy needs no lookup."""
        self._owners[job_id] = user_id
        if len(self._owners) > OWNERS_KEPT:
            self._owners.popitem(last=False)

    async def _owned(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """``(user id, job id)`` of each job that exists (owners not known yet: one query)."""
        unknown = [j for j in job_ids if j not in self._owners]
        if unknown:
            rows = await self.pool.fetch(
                "SELECT job_id::text AS job_id, user_id FROM jobs WHERE job_id = ANY($1::uuid[])", unknown
            )
            for row in rows:
                self.remember(row["job_id"], str(row["user_id"]))
        out: list[tuple[str, str]] = []
        for j in job_ids:
            user = self._owners.get(j)
            if user is not None:
                self._owners.move_to_end(j)
                out.append((user, j))
        return out

    async def copy_due(self) -> None:
        """Copy the jobs :meth:`notice` named since the last call, all in one batch."""
        due, self._due = list(self._due), {}
        if not due:
            return
        try:
            await self.log.relay_many(await self._owned(due))
        except Exception as exc:  # the sweep copies them later
            log.warning("user_events_copy_failed", jobs=len(due), error=str(exc)[:200])

    async def sweep(self, window: timedelta) -> int:
        """Copy again every running job and every job changed within ``window``; events copied."""
        rows = await self.pool.fetch(
            "SELECT job_id::text AS job_id, user_id FROM jobs"
            " WHERE status IN ('queued', 'processing') OR updated_at > now() - $1::interval",
            window,
        )
        pairs = [(str(r["user_id"]), r["job_id"]) for r in rows]
        for user, job in pairs:
            self.remember(job, user)
        n = 0
        for start in range(0, len(pairs), SWEEP_BATCH):
            try:
                n += await self.log.relay_many(pairs[start : start + SWEEP_BATCH], fresh=True)
            except Exception as exc:
                log.warning(
                    "user_events_copy_failed", jobs=len(pairs[start : start + SWEEP_BATCH]), error=str(exc)[:200]
                )
        if n:
            log.info("user_events_swept", copied=n, jobs=len(rows))
        return n

    async def run(self, stop: asyncio.Event) -> None:
        """Copy what :meth:`notice` names as it comes, and sweep every ``sweep_seconds``, until ``stop``."""
        window = START_WINDOW
        next_sweep = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_sweep:
                try:
                    await self.sweep(window)
                    window = self.window
                except Exception as exc:
                    log.warning("user_events_sweep_failed", error=str(exc)[:200])
                next_sweep = time.monotonic() + self.sweep_seconds
            await self.copy_due()
            self._wake.clear()
            if self._due:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_sweep - time.monotonic())):
                    waker = asyncio.ensure_future(self._wake.wait())
                    stopper = asyncio.ensure_future(stop.wait())
                    try:
                        await asyncio.wait({waker, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waker.cancel()
                        stopper.cancel()
        await self.copy_due()  # what was noticed before the stop
