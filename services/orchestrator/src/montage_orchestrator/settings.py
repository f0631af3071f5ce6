"""Settings of the orchestrator, read once in ``main()`` (see ``montage_common.settings``)."""

from __future__ import annotations

import base64
import binascii
from decimal import Decimal, InvalidOperation
from typing import Annotated

from montage_common.settings import PricingSettings
from msgspec import Meta

# Development only (ENVIRONMENT=development without WEBHOOK_SECRET): a fixed, public secret, so
# the demo and local receivers can verify signatures with no setup. Never used elsewhere.
DEV_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"montage-development-webhook-key!").decode()


def signing_key(secret: str) -> bytes | None:
    """The key of a ``whsec_…`` secret (24 to 64 bytes, as the Standard Webhooks spec asks); None if malformed."""
    if not secret.startswith("whsec_"):
        return None
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if 24 <= len(key) <= 64 else None


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
    webhook_secret: Annotated[
        str,
        Meta(
            description="Standard Webhooks signing secret (`whsec_` + base64 of 24-64 random bytes) of every webhook"
            " delivery; empty: webhooks are refused at upload outside development (development signs with"
            " DEV_WEBHOOK_SECRET)"
        ),
    ] = ""
    webhook_timeout_seconds: Annotated[
        float, Meta(gt=0, description="one webhook delivery attempt: connect, send and the receiver's answer")
    ] = 10.0
    webhook_retry_base_seconds: Annotated[
        float, Meta(gt=0, description="a failed webhook delivery is retried after this, doubling each attempt")
    ] = 5.0
    webhook_retry_max_interval_seconds: Annotated[
        float, Meta(gt=0, description="longest wait between two attempts of one webhook delivery")
    ] = 3600.0
    webhook_retry_window_seconds: Annotated[
        float,
        Meta(
            gt=0,
            description="a webhook delivery is retried until an attempt fails this long after its event (then it"
            " is marked failed; an operator can resend it)",
        ),
    ] = 86400.0
    webhook_poll_seconds: Annotated[
        float, Meta(gt=0, description="how often each replica looks for webhook deliveries due")
    ] = 1.0
    webhook_concurrency: Annotated[
        int, Meta(ge=1, description="webhook deliveries sent at once per orchestrator process")
    ] = 16
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
        if self.webhook_secret and signing_key(self.webhook_secret) is None:
            found.append("WEBHOOK_SECRET must be whsec_ followed by the base64 of 24 to 64 bytes")
        return found

    @property
    def webhook_signing_secret(self) -> str:
        """The secret deliveries are signed with ("": webhooks are off)."""
        if self.webhook_secret:
            return self.webhook_secret
        return "" if self.is_production else DEV_WEBHOOK_SECRET
