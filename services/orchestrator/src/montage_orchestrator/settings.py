"""Settings of the orchestrator, read once in ``main()`` (see ``montage_common.settings``)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from montage_common.settings import CommonSettings


class OrchestratorSettings(CommonSettings, frozen=True, kw_only=True):
    """Environment: the upper-cased field names (``MAX_UPLOAD_BYTES``, ``JOB_TIMEOUT_SECONDS`` …)."""

    port: int = 8081
    ops_port: int = 9081  # /healthz, /readyz, /metrics
    max_upload_bytes: int = 10 * 1024 * 1024  # upload size limit, enforced while streaming
    max_audio_seconds: float = 600.0  # longer songs are rejected at upload
    prompt_min_chars: int = 50  # shortest prompt accepted (after trimming)
    prompt_max_chars: int = 500  # longest prompt accepted (after trimming)
    # Per-job hard cap; empty: the mode's cap (production/staging $2000, development $50).
    job_cost_limit: str = ""
    job_timeout_seconds: float = 900.0  # a job running longer fails with TIMEOUT
    status_cache_seconds: int = 30  # TTL of the cached job status
    cancel_flag_seconds: int = 900  # TTL of the job_cancel:{job_id} flag workers check
    download_url_seconds: int = 3600  # validity of signed download URLs
    video_retention_days: float = 14.0  # how long a finished video is kept
    failed_retention_days: float = 7.0  # how long a failed job's files are kept
    # Scheduled cleanup: at most once per interval across every replica (a Redis lease).
    cleanup_interval_seconds: float = 86400.0
    # Files with no job row are deleted only when older than this (an upload in flight has none yet).
    orphan_grace_seconds: float = 3600.0
    # Timeout and outbox sweeps: how often, and how old an unsent outbox entry must be.
    sweep_interval_seconds: float = 5.0
    outbox_grace_seconds: float = 10.0  # an unsent first dispatch older than this is re-sent by the sweeper
    results_concurrency: int = 8  # results handled at once per orchestrator process
    claim_idle_ms: int = 30_000
    db_pool_size: int = 10  # Postgres connections per process
    run_migrations: bool = True  # apply database migrations at start-up
    replica_id: str = ""

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
