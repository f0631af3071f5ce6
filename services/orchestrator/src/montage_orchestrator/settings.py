"""Settings of the orchestrator, read once in ``main()`` (see ``montage_common.settings``)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

from montage_common.settings import PricingSettings
from msgspec import Meta


class OrchestratorSettings(PricingSettings, frozen=True, kw_only=True):
    """Environment: the upper-cased field names (``MAX_UPLOAD_BYTES``, ``JOB_TIMEOUT_SECONDS`` …)."""

    port: int = 8081
    ops_port: int = 9081
    max_upload_bytes: Annotated[int, Meta(description="upload size limit, enforced while streaming")] = 10 * 1024 * 1024
    max_audio_seconds: Annotated[float, Meta(description="longer songs are rejected at upload")] = 600.0
    prompt_min_chars: Annotated[int, Meta(description="shortest prompt accepted (after trimming)")] = 50
    prompt_max_chars: Annotated[int, Meta(description="longest prompt accepted (after trimming)")] = 500
    job_cost_limit: Annotated[
        str, Meta(description="Per-job hard cap; empty: the mode's cap (production/staging $2000, development $50).")
    ] = ""
    job_timeout_seconds: Annotated[
        float,
        Meta(
            description="a job running longer than this since its first stage was dispatched fails with TIMEOUT (waiting for its turn does not count)"
        ),
    ] = 900.0
    user_max_active_jobs: Annotated[
        int,
        Meta(
            ge=1,
            description="jobs of one user processing at once; the rest wait as queued (no deadline) and start in turn, round robin over users",
        ),
    ] = 2
    admission_max_wait_seconds: Annotated[
        float,
        Meta(
            ge=0,
            description="an upload whose job is predicted to wait longer than this to start gets 503 (busy) with Retry-After (0: never refused); default: as long as a job may run",
        ),
    ] = 900.0
    worker_concurrency: Annotated[
        int,
        Meta(
            ge=1,
            description="tasks at once per stage worker (the workers' own setting): the admission forecast counts live workers x this",
        ),
    ] = 3
    status_cache_seconds: Annotated[int, Meta(description="TTL of the cached job status")] = 30
    cancel_flag_seconds: Annotated[int, Meta(description="TTL of the job_cancel:{job_id} flag workers check")] = 900
    download_url_seconds: Annotated[int, Meta(description="validity of signed download URLs")] = 3600
    video_retention_days: Annotated[float, Meta(description="how long a finished video is kept")] = 14.0
    failed_retention_days: Annotated[float, Meta(description="how long a failed job's files are kept")] = 7.0
    cleanup_interval_seconds: Annotated[
        float, Meta(description="Scheduled cleanup: at most once per interval across every replica (a Redis lease).")
    ] = 86400.0
    orphan_grace_seconds: Annotated[
        float,
        Meta(
            description="Files with no job row are deleted only when older than this (an upload in flight has none yet)."
        ),
    ] = 3600.0
    sweep_interval_seconds: Annotated[float, Meta(description="how often the timeout and outbox sweeps run")] = 5.0
    outbox_grace_seconds: Annotated[
        float, Meta(description="an unsent first dispatch older than this is re-sent by the sweeper")
    ] = 10.0
    stage_stall_seconds: Annotated[
        float,
        Meta(
            description="a running stage whose worker reported no progress (start, progress text, cost) for this long is stuck: dispatched again, or failed after STAGE_MAX_DISPATCHES"
        ),
    ] = 300.0
    stage_max_dispatches: Annotated[
        int, Meta(description="dispatches of one stage of a job before a stuck stage fails the job instead")
    ] = 3
    results_concurrency: Annotated[int, Meta(description="results handled at once per orchestrator process")] = 32
    db_pool_size: Annotated[int, Meta(description="Postgres connections per process")] = 10
    run_migrations: Annotated[bool, Meta(description="apply database migrations at start-up")] = True
    replica_id: Annotated[
        str, Meta(description="this process's name in consumer groups and leases; empty: host-pid-random")
    ] = ""

    @property
    def cost_limit(self) -> Decimal:
        if self.job_cost_limit:
            try:
                return Decimal(self.job_cost_limit)
            except InvalidOperation:
                raise SystemExit(f"invalid JOB_COST_LIMIT: {self.job_cost_limit!r}") from None
        return Decimal("2000") if self.is_production else Decimal("50")

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.max_upload_bytes <= 0:
            found.append("MAX_UPLOAD_BYTES must be positive")
        if self.prompt_min_chars > self.prompt_max_chars:
            found.append("PROMPT_MIN_CHARS must not exceed PROMPT_MAX_CHARS")
        if self.sweep_interval_seconds <= 0 or self.cleanup_interval_seconds <= 0:
            found.append("SWEEP_INTERVAL_SECONDS and CLEANUP_INTERVAL_SECONDS must be positive")
        if self.storage_backend == "supabase" and not (self.supabase_url and self.supabase_service_key):
            found.append("STORAGE_BACKEND=supabase needs SUPABASE_URL and SUPABASE_SERVICE_KEY")
        return found
