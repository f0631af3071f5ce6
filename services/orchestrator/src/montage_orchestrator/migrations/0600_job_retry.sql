-- Retry (montage_orchestrator.retry): a retry is a new job of the same user, song and prompt whose
-- `retry_of` names the failed or cancelled job it continues; that job's `retried_by` names it back
-- (set once, under the job's row lock: a job is retried at most once, so a double click makes
-- one new job). Additive: older rows have neither.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS retry_of uuid;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS retried_by uuid;
CREATE INDEX IF NOT EXISTS jobs_retry_of ON jobs (retry_of) WHERE retry_of IS NOT NULL;
