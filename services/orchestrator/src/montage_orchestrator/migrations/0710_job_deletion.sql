-- Deletion (montage_orchestrator.deletion, DELETE /api/v1/jobs/{job_id}): a deleted job's rows are
-- gone (jobs, and by ON DELETE CASCADE its stages, costs and webhook deliveries). What is kept,
-- and why: billing must still add up after a user deletes a job, so each provider charge moves to
-- `deleted_job_costs` (amount, provider, stage, time; no prompt, no file name, no output), under a
-- `deleted_jobs` row that keeps only the job id, its owner's user id (whom the money was spent
-- for: the month's spend in GET /api/v1/usage and invoices), when it was created and deleted, and
-- by whom (the user, or an operator). The same row makes a repeated DELETE answer 204 to the
-- owner (idempotent) and 404 to anyone else.
CREATE TABLE deleted_jobs (
    job_id            uuid PRIMARY KEY,
    user_id           text NOT NULL,
    created_at        timestamptz NOT NULL,
    deleted_at        timestamptz NOT NULL DEFAULT now(),
    deleted_by        text NOT NULL,
    total_cost        numeric(14, 6) NOT NULL DEFAULT 0
);
CREATE INDEX deleted_jobs_user ON deleted_jobs (user_id, deleted_at);

CREATE TABLE deleted_job_costs (
    id                bigserial PRIMARY KEY,
    job_id            uuid NOT NULL REFERENCES deleted_jobs (job_id),
    stage_name        text NOT NULL,
    api_name          text NOT NULL,
    cost              numeric(14, 6) NOT NULL CHECK (cost >= 0),
    created_at        timestamptz NOT NULL
);
CREATE INDEX deleted_job_costs_job ON deleted_job_costs (job_id);
