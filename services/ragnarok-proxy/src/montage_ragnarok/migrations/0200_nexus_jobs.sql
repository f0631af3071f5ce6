-- ragnarok-proxy: Nexus jobs, each mapped to one RAGNAROK workflow, polled in the background.
-- A job is due for the poller while next_poll_at is set and has passed; a final job keeps
-- next_poll_at until its event is published, then it is cleared. lease_owner/lease_expires_at
-- give one replica at a time the right to poll a job; an expired lease can be claimed by any.
CREATE TABLE nexus_jobs (
    job_id            text PRIMARY KEY,
    user_id           text NOT NULL,
    workflow_id       text NOT NULL UNIQUE,
    kind              text NOT NULL CHECK (kind IN ('enriched', 'direct')),
    business_name     text NOT NULL,
    status            text NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    request           jsonb NOT NULL,
    enrichment        jsonb,
    trace_id          text NOT NULL,
    video_url         text,
    cost_usd          numeric(12, 4),
    quality_score     double precision,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    next_poll_at      timestamptz,
    poll_attempts     integer NOT NULL DEFAULT 0,
    poll_streak       integer NOT NULL DEFAULT 0,
    last_polled_at    timestamptz,
    event_published_at timestamptz,
    lease_owner       text,
    lease_expires_at  timestamptz
);
CREATE INDEX nexus_jobs_due ON nexus_jobs (next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX nexus_jobs_user_created ON nexus_jobs (user_id, created_at DESC);
