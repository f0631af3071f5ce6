-- Webhooks (montage_orchestrator.webhooks): a job may name a URL at upload (`webhook_url`); when it
-- becomes final (completed, failed, cancelled) a delivery row is written by the trigger below, in
-- the very transaction that changes the job's status, whichever code path changes it (the
-- pipeline's orchestrator_apply, a cancel, a timeout, the reconciler). The delivery loop sends
-- each row, signed by the Standard Webhooks rules, until the receiver answers 2xx, retrying with
-- exponential backoff for at least WEBHOOK_RETRY_WINDOW_SECONDS; `id` is the `webhook-id` header,
-- the same on every attempt. Deleting a job deletes its deliveries (ON DELETE CASCADE).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS webhook_url text;

CREATE TABLE webhook_deliveries (
    id                text PRIMARY KEY,
    job_id            uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    url               text NOT NULL,
    event_type        text NOT NULL CHECK (event_type IN ('job.completed', 'job.failed', 'job.cancelled')),
    data              jsonb NOT NULL,
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_attempt_at   timestamptz,
    last_status       integer,
    last_error        text,
    delivered_at      timestamptz,
    retry_from        timestamptz NOT NULL DEFAULT now(),  -- the retry window's start (a resend restarts it)
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, created_at);

CREATE FUNCTION webhook_on_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, job_id, url, event_type, data)
    VALUES (
        'msg_' || replace(gen_random_uuid()::text, '-', ''),
        NEW.job_id,
        NEW.webhook_url,
        CASE
            WHEN NEW.status = 'completed' THEN 'job.completed'
            WHEN NEW.error_code = 'CANCELLED' THEN 'job.cancelled'
            ELSE 'job.failed'
        END,
        jsonb_build_object(
            'job_id', NEW.job_id::text,
            'status', NEW.status,
            'total_cost', NEW.total_cost,
            'error', NEW.error_message,
            'error_code', NEW.error_code,
            'completed_at', NEW.completed_at,
            'retry_of', NEW.retry_of::text
        )
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_webhook_on_final
    AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (
        NEW.webhook_url IS NOT NULL
        AND NEW.status IN ('completed', 'failed')
        AND OLD.status IS DISTINCT FROM NEW.status
    )
    EXECUTE FUNCTION webhook_on_final();
