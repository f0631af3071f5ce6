-- The operator console's action log: every retry, delete and cancel an admin asked for, with who
-- asked, what it was aimed at, and what came of it (also refused and missing targets).
CREATE TABLE admin_actions (
    id                bigserial PRIMARY KEY,
    actor             text NOT NULL,
    action            text NOT NULL,
    target            text NOT NULL,
    job_id            uuid,
    outcome           text NOT NULL CHECK (outcome IN ('done', 'not_found', 'conflict')),
    detail            jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_id        text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_actions_created ON admin_actions (created_at DESC);
CREATE INDEX admin_actions_job ON admin_actions (job_id, created_at DESC) WHERE job_id IS NOT NULL;
