-- Montage base schema. Money is NUMERIC (6 decimals: local compute is priced in fractions of a cent); times are timestamptz (UTC).
CREATE TABLE jobs (
    job_id            uuid PRIMARY KEY,
    user_id           text NOT NULL,
    status            text NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    current_stage     text,
    progress          integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    user_prompt       text NOT NULL,
    audio_key         text NOT NULL,
    audio_filename    text NOT NULL,
    audio_duration    double precision NOT NULL,
    environment       text NOT NULL,
    estimated_cost    numeric(14, 6) NOT NULL DEFAULT 0,
    cost_limit        numeric(14, 6) NOT NULL,
    total_cost        numeric(14, 6) NOT NULL DEFAULT 0,
    video_key         text,
    error_message     text,
    error_code        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    deadline_at       timestamptz NOT NULL,
    files_expire_at   timestamptz,
    files_cleaned_at  timestamptz
);
CREATE INDEX jobs_user_created ON jobs (user_id, created_at DESC);
CREATE INDEX jobs_active ON jobs (status, deadline_at) WHERE status IN ('queued', 'processing');

CREATE TABLE job_stages (
    job_id            uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    stage_name        text NOT NULL,
    status            text NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'skipped')),
    dispatch          integer NOT NULL DEFAULT 0,
    attempts          integer NOT NULL DEFAULT 0,
    started_at        timestamptz,
    completed_at      timestamptz,
    duration_seconds  double precision,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    output            jsonb,
    error             text,
    PRIMARY KEY (job_id, stage_name)
);

CREATE TABLE job_costs (
    id                bigserial PRIMARY KEY,
    job_id            uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    stage_name        text NOT NULL,
    api_name          text NOT NULL,
    call_id           text NOT NULL,
    cost              numeric(14, 6) NOT NULL CHECK (cost >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, call_id)
);

CREATE TABLE job_cleanup_log (
    id                bigserial PRIMARY KEY,
    job_id            uuid,
    object_key        text NOT NULL,
    action            text NOT NULL,
    status            text NOT NULL CHECK (status IN ('deleted', 'failed')),
    reason            text NOT NULL,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_cleanup_log_failed ON job_cleanup_log (status, created_at) WHERE status = 'failed';
