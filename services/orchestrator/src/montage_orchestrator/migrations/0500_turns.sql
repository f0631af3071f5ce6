-- Fair turns (montage_orchestrator.admission): a job waits for its turn as `queued` with no
-- deadline and no task in any stream; its deadline (JOB_TIMEOUT_SECONDS) is set when its first
-- stage is dispatched, so the timeout measures work, never waiting. Rows written before this
-- migration all have a deadline: they hold their slot as before.
ALTER TABLE jobs ALTER COLUMN deadline_at DROP NOT NULL;
CREATE INDEX jobs_waiting ON jobs (user_id, created_at) WHERE status = 'queued' AND deadline_at IS NULL;
