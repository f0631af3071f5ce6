"""Postgres access for Nexus jobs (table ``nexus_jobs``, migration 0200).

Polling work is shared through leases: :meth:`JobStore.claim` takes due jobs whose lease is free
or expired with ``FOR UPDATE SKIP LOCKED`` and stamps them with the replica's id and an expiry
(database time). Every write-back is conditional on still holding the lease, so a replica whose
lease was taken over can never overwrite the new owner's work.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from montage_contracts.pipeline import FINAL_STATUSES, JOB_STATUSES, JobStatus

# A Nexus job has the statuses of a Montage job (montage_contracts.pipeline).
STATUSES: tuple[str, ...] = JOB_STATUSES
FINAL: frozenset[JobStatus] = FINAL_STATUSES

_COLUMNS = (
    "job_id, user_id, workflow_id, kind, business_name, status, request::text AS request,"
    " enrichment::text AS enrichment, trace_id, video_url, cost_usd, quality_score, error,"
    " created_at, updated_at, completed_at"
)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One Nexus job and the last known state of its RAGNAROK workflow."""

    job_id: str
    user_id: str
    workflow_id: str
    kind: str
    business_name: str
    status: JobStatus
    request: dict[str, Any]
    enrichment: dict[str, Any] | None
    trace_id: str
    video_url: str | None = None
    cost_usd: Decimal | None = None
    quality_score: float | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A job this replica holds the lease on, with how late its poll is."""

    job: Job
    poll_streak: int
    lag_seconds: float
    age_seconds: float


def _job(record: asyncpg.Record) -> Job:
    row = dict(record)
    row["request"] = msgspec.json.decode(row["request"]) if row["request"] else {}
    row["enrichment"] = msgspec.json.decode(row["enrichment"]) if row["enrichment"] else None
    fields = {k: v for k, v in row.items() if k in Job.__struct_fields__}
    return Job(**{**fields, "status": JobStatus(fields["status"])})


def _json(value: object) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


class JobStore:
    """Queries on ``nexus_jobs``; one instance per process, sharing the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def insert(
        self,
        *,
        job_id: str,
        user_id: str,
        workflow_id: str,
        kind: str,
        business_name: str,
        status: str,
        request: dict[str, Any],
        enrichment: dict[str, Any] | None,
        trace_id: str,
        first_poll_in: float,
    ) -> Job:
        record = await self.pool.fetchrow(
            "INSERT INTO nexus_jobs (job_id, user_id, workflow_id, kind, business_name, status, request,"
            " enrichment, trace_id, next_poll_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9,"
            " now() + make_interval(secs => $10::double precision))"
            f" RETURNING {_COLUMNS}",
            job_id,
            user_id,
            workflow_id,
            kind,
            business_name,
            status if status in STATUSES else JobStatus.QUEUED,
            _json(request),
            _json(enrichment),
            trace_id,
            first_poll_in,
        )
        assert record is not None
        return _job(record)

    async def get(self, job_id: str) -> Job | None:
        record = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM nexus_jobs WHERE job_id = $1", job_id)
        return None if record is None else _job(record)

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[Claim]:
        """Lease up to ``limit`` due jobs to ``owner``, most overdue first."""
        records = await self.pool.fetch(
            "UPDATE nexus_jobs AS j"
            " SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2::double precision)"
            " FROM (SELECT job_id FROM nexus_jobs"
            "       WHERE next_poll_at IS NOT NULL AND next_poll_at <= now()"
            "         AND (lease_expires_at IS NULL OR lease_expires_at <= now())"
            "       ORDER BY next_poll_at LIMIT $3 FOR UPDATE SKIP LOCKED) AS due"
            " WHERE j.job_id = due.job_id"
            " RETURNING j.job_id, j.user_id, j.workflow_id, j.kind, j.business_name, j.status,"
            " j.request::text AS request, j.enrichment::text AS enrichment, j.trace_id, j.video_url, j.cost_usd,"
            " j.quality_score, j.error, j.created_at, j.updated_at, j.completed_at, j.poll_streak,"
            " extract(epoch FROM now() - j.next_poll_at)::double precision AS lag_seconds,"
            " extract(epoch FROM now() - j.created_at)::double precision AS age_seconds",
            owner,
            lease_seconds,
            limit,
        )
        return [
            Claim(job=_job(r), poll_streak=r["poll_streak"], lag_seconds=r["lag_seconds"], age_seconds=r["age_seconds"])
            for r in records
        ]

    async def record_progress(self, job_id: str, owner: str, *, status: str, streak: int, next_poll_in: float) -> bool:
        """A non-final poll result: schedule the next poll and give up the lease."""
        result: str = await self.pool.execute(
            "UPDATE nexus_jobs SET status = $3, poll_attempts = poll_attempts + 1, poll_streak = $4,"
            " last_polled_at = now(), updated_at = now(),"
            " next_poll_at = now() + make_interval(secs => $5::double precision),"
            " lease_owner = NULL, lease_expires_at = NULL"
            " WHERE job_id = $1 AND lease_owner = $2 AND status NOT IN ('completed', 'failed')",
            job_id,
            owner,
            status,
            streak,
            next_poll_in,
        )
        return result.endswith(" 1")

    async def record_final(
        self,
        job_id: str,
        owner: str,
        *,
        status: str,
        video_url: str | None,
        cost_usd: Decimal | None,
        quality_score: float | None,
        error: str | None,
    ) -> bool:
        """A final status: stored at once, the lease kept and the job left due so its event gets published."""
        result: str = await self.pool.execute(
            "UPDATE nexus_jobs SET status = $3, video_url = $4, cost_usd = $5, quality_score = $6, error = $7,"
            " poll_attempts = poll_attempts + 1, last_polled_at = now(), updated_at = now(),"
            " completed_at = now(), next_poll_at = now()"
            " WHERE job_id = $1 AND lease_owner = $2 AND status NOT IN ('completed', 'failed')",
            job_id,
            owner,
            status,
            video_url,
            cost_usd,
            quality_score,
            error,
        )
        return result.endswith(" 1")

    async def record_failure(self, job_id: str, owner: str, *, streak: int, next_poll_in: float) -> bool:
        """A poll that failed (RAGNAROK down or slow): try again later, give up the lease."""
        result: str = await self.pool.execute(
            "UPDATE nexus_jobs SET poll_attempts = poll_attempts + 1, poll_streak = $3, last_polled_at = now(),"
            " next_poll_at = now() + make_interval(secs => $4::double precision),"
            " lease_owner = NULL, lease_expires_at = NULL"
            " WHERE job_id = $1 AND lease_owner = $2",
            job_id,
            owner,
            streak,
            next_poll_in,
        )
        return result.endswith(" 1")

    async def mark_published(self, job_id: str, owner: str) -> bool:
        """The final event is on the stream: the job needs no more work."""
        result: str = await self.pool.execute(
            "UPDATE nexus_jobs SET event_published_at = now(), next_poll_at = NULL,"
            " lease_owner = NULL, lease_expires_at = NULL"
            " WHERE job_id = $1 AND lease_owner = $2",
            job_id,
            owner,
        )
        return result.endswith(" 1")

    async def release(self, job_id: str, owner: str, *, retry_in: float = 0.0) -> bool:
        """Give a lease back without polling (not enough lease time left, or shutting down)."""
        result: str = await self.pool.execute(
            "UPDATE nexus_jobs SET lease_owner = NULL, lease_expires_at = NULL,"
            " next_poll_at = greatest(next_poll_at, now() + make_interval(secs => $3::double precision))"
            " WHERE job_id = $1 AND lease_owner = $2",
            job_id,
            owner,
            retry_in,
        )
        return result.endswith(" 1")

    async def release_all(self, owner: str) -> int:
        result: str = await self.pool.execute(
            "UPDATE nexus_jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1", owner
        )
        return int(result.rsplit(" ", 1)[-1])

    async def count_by_status(self) -> dict[str, int]:
        records = await self.pool.fetch("SELECT status, count(*) AS n FROM nexus_jobs GROUP BY status")
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in records})
        return counts
