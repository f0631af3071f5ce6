-- Orchestrator: the outbox (hand-offs not tied to a stream ack) and handled results.
CREATE TABLE orchestrator_outbox (
    id                bigserial PRIMARY KEY,
    job_id            uuid,
    emits             bytea NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orchestrator_outbox_created ON orchestrator_outbox (created_at);

-- A results-stream entry whose effects are committed, with the emits that go out with its ack:
-- a redelivery after a crash between commit and ack re-sends exactly these.
CREATE TABLE orchestrator_handled (
    entry_id          text PRIMARY KEY,
    job_id            uuid NOT NULL,
    emits             bytea NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orchestrator_handled_created ON orchestrator_handled (created_at);
CREATE INDEX jobs_files_expire ON jobs (files_expire_at) WHERE files_cleaned_at IS NULL;
