"""Prometheus metrics of the orchestrator."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_CREATED = Counter("montage_jobs_created_total", "Jobs created")
JOBS_COMPLETED = Counter("montage_jobs_completed_total", "Jobs completed")
JOBS_FAILED = Counter("montage_jobs_failed_total", "Jobs failed", ["code"])
STAGE_DURATION = Histogram(
    "montage_stage_roundtrip_seconds",
    "Stage duration from dispatch to result, as seen by the orchestrator",
    ["stage", "outcome"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 900),
)
COST_DOLLARS = Counter("montage_job_cost_dollars_total", "Recorded provider cost", ["stage"])
# One observation per finished job (job_metrics.finished); the counts by outcome give the success ratio.
JOB_DURATION = Histogram(
    "montage_job_duration_seconds",
    "Finished jobs: creation to the final status, by outcome (completed, failed, cancelled)",
    ["outcome"],
    buckets=(30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600),
)
JOB_COST = Histogram(
    "montage_job_total_cost_dollars",
    "Finished jobs: total provider cost of one job in US dollars, by outcome",
    ["outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20),
)
ACTIVE_JOBS = Gauge("montage_active_jobs", "Jobs queued or processing")
STAGE_BACKLOG = Gauge("montage_stage_backlog", "Stage tasks not finished: unread plus in flight", ["stage"])
STAGE_WORKERS = Gauge("montage_stage_workers", "Stage workers with a live heartbeat", ["stage"])
UPLOAD_REJECTED = Counter("montage_upload_rejected_total", "Uploads refused", ["code"])
CLEANUP_DELETED = Counter("montage_cleanup_objects_total", "Cleanup actions", ["status"])
STAGES_REDISPATCHED = Counter(
    "montage_stages_redispatched_total", "Stages dispatched again because Redis lost their task or result", ["stage"]
)
STAGES_STUCK = Counter(
    "montage_stages_stuck_total",
    "Stages whose live worker reported no progress for STAGE_STALL_SECONDS (outcome: redispatched or failed)",
    ["stage", "outcome"],
)
ADMISSION_PREDICTED_WAIT = Gauge(
    "montage_admission_predicted_wait_seconds", "Predicted start delay of a job uploaded now (at the last upload)"
)
ADMISSION_REFUSED = Counter("montage_admission_refused_total", "Uploads refused at the door (503 (busy))")
WEBHOOK_ATTEMPTS = Counter(
    "montage_webhook_attempts_total",
    "Webhook delivery attempts by outcome: delivered (2xx), failed (another answer, a timeout, no connection),"
    " refused (the URL broke the SSRF rules at delivery: never contacted)",
    ["outcome"],
)
WEBHOOK_GAVE_UP = Counter(
    "montage_webhook_gave_up_total", "Webhook deliveries marked failed after WEBHOOK_RETRY_WINDOW_SECONDS of attempts"
)
WEBHOOK_URLS_REFUSED = Counter(
    "montage_webhook_urls_refused_total", "Webhook URLs refused by the SSRF rules (where: upload, delivery)", ["where"]
)
WEBHOOK_SECONDS = Histogram(
    "montage_webhook_attempt_seconds",
    "One webhook delivery attempt: connect, send and the receiver's answer",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
WEBHOOK_BACKLOG = Gauge("montage_webhook_backlog", "Webhook deliveries not yet delivered nor given up (the outbox)")
WEBHOOK_OLDEST_PENDING = Gauge(
    "montage_webhook_oldest_pending_seconds", "Age of the oldest webhook delivery still pending (0: none)"
)
JOBS_DELETED = Counter("montage_jobs_deleted_total", "Jobs deleted (by: owner, operator)", ["by"])
