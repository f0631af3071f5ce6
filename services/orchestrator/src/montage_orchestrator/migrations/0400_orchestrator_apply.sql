-- One stage-stream result applied in one call (montage_orchestrator.pipeline): the orchestrator
-- reads the job's state without a lock (store.read_state), decides in Python, and sends every write
-- of the result here. Under the job's row lock this checks, in order: the entry already handled
-- (-> 'handled' with its recorded emits), the job gone or final, the stage no longer running under
-- the result's dispatch (-> 'stale'); the job's status or total, a cost, or the next stage's dispatch
-- changed since the read (-> 'conflict': nothing written, the caller reads again). Only then it
-- writes: the costs (p_costs: [{"api", "call", "amount" as text}]), the result's stage (closed, or its metadata patched), the running stages failed
-- (a failed job), the next stage started, the job row once, the handled entry with its emits.
CREATE FUNCTION orchestrator_apply(
    p_entry text,
    p_job uuid,
    p_stage text,
    p_dispatch integer,
    p_expect_status text,
    p_expect_total numeric,
    p_costs jsonb,
    p_stage_meta jsonb,
    p_finish text,
    p_attempts integer,
    p_output jsonb,
    p_stage_error text,
    p_duration double precision,
    p_fail_running text,
    p_next text,
    p_next_dispatch integer,
    p_status text,
    p_progress integer,
    p_current_stage text,
    p_total numeric,
    p_video_key text,
    p_error_message text,
    p_error_code text,
    p_started boolean,
    p_completed boolean,
    p_expire interval,
    p_record boolean,
    p_emits bytea
) RETURNS TABLE (o_outcome text, o_emits bytea, o_job jobs)
LANGUAGE plpgsql AS $$
DECLARE
    j_status text;
    j_total numeric;
    s_status text;
    s_dispatch integer;
    n_dispatch integer;
    recorded bytea;
    updated jobs;
BEGIN
    SELECT j.status, j.total_cost INTO j_status, j_total FROM jobs j WHERE j.job_id = p_job FOR UPDATE;
    SELECT h.emits INTO recorded FROM orchestrator_handled h WHERE h.entry_id = p_entry;
    IF recorded IS NOT NULL THEN
        RETURN QUERY SELECT 'handled'::text, recorded, NULL::jobs;
        RETURN;
    END IF;
    IF j_status IS NULL OR j_status IN ('completed', 'failed') THEN
        RETURN QUERY SELECT 'stale'::text, NULL::bytea, NULL::jobs;
        RETURN;
    END IF;
    SELECT s.status, s.dispatch INTO s_status, s_dispatch
    FROM job_stages s WHERE s.job_id = p_job AND s.stage_name = p_stage;
    IF s_status IS DISTINCT FROM 'running' OR s_dispatch IS DISTINCT FROM p_dispatch THEN
        RETURN QUERY SELECT 'stale'::text, NULL::bytea, NULL::jobs;
        RETURN;
    END IF;
    IF j_status <> p_expect_status OR j_total <> p_expect_total THEN
        RETURN QUERY SELECT 'conflict'::text, NULL::bytea, NULL::jobs;
        RETURN;
    END IF;
    IF jsonb_array_length(p_costs) > 0 AND EXISTS (
        SELECT 1 FROM job_costs c
        WHERE c.job_id = p_job AND c.call_id IN (SELECT x ->> 'call' FROM jsonb_array_elements(p_costs) AS x)
    ) THEN
        RETURN QUERY SELECT 'conflict'::text, NULL::bytea, NULL::jobs;
        RETURN;
    END IF;
    IF p_next IS NOT NULL THEN
        SELECT s.dispatch INTO n_dispatch FROM job_stages s WHERE s.job_id = p_job AND s.stage_name = p_next;
        IF COALESCE(n_dispatch, 0) <> p_next_dispatch - 1 THEN
            RETURN QUERY SELECT 'conflict'::text, NULL::bytea, NULL::jobs;
            RETURN;
        END IF;
    END IF;

    IF jsonb_array_length(p_costs) > 0 THEN
        INSERT INTO job_costs (job_id, stage_name, api_name, call_id, cost)
        SELECT p_job, p_stage, x ->> 'api', x ->> 'call', (x ->> 'amount')::numeric
        FROM jsonb_array_elements(p_costs) WITH ORDINALITY AS e (x, n) ORDER BY e.n
        ON CONFLICT (job_id, call_id) DO NOTHING;
    END IF;
    IF p_finish IS NOT NULL THEN
        UPDATE job_stages s SET status = p_finish, attempts = GREATEST(s.attempts, p_attempts), completed_at = now(),
            duration_seconds = p_duration, output = COALESCE(p_output, s.output),
            metadata = s.metadata || COALESCE(p_stage_meta, '{}'::jsonb), error = p_stage_error
        WHERE s.job_id = p_job AND s.stage_name = p_stage;
    ELSIF p_stage_meta IS NOT NULL THEN
        UPDATE job_stages s SET metadata = s.metadata || p_stage_meta
        WHERE s.job_id = p_job AND s.stage_name = p_stage;
    END IF;
    IF p_fail_running IS NOT NULL THEN
        UPDATE job_stages s SET status = 'failed', completed_at = now(), error = p_fail_running,
            duration_seconds = EXTRACT(EPOCH FROM now() - s.started_at)
        WHERE s.job_id = p_job AND s.status = 'running';
    END IF;
    IF p_next IS NOT NULL THEN
        INSERT INTO job_stages (job_id, stage_name, status, dispatch, started_at)
        VALUES (p_job, p_next, 'running', p_next_dispatch, now())
        ON CONFLICT (job_id, stage_name) DO UPDATE SET status = 'running', dispatch = p_next_dispatch,
            started_at = now(), completed_at = NULL, error = NULL;
    END IF;
    UPDATE jobs j SET
        status = COALESCE(p_status, j.status),
        progress = COALESCE(p_progress, j.progress),
        current_stage = COALESCE(p_current_stage, j.current_stage),
        total_cost = COALESCE(p_total, j.total_cost),
        video_key = COALESCE(p_video_key, j.video_key),
        error_message = COALESCE(p_error_message, j.error_message),
        error_code = COALESCE(p_error_code, j.error_code),
        started_at = CASE WHEN p_started THEN now() ELSE j.started_at END,
        completed_at = CASE WHEN p_completed THEN now() ELSE j.completed_at END,
        files_expire_at = COALESCE(now() + p_expire, j.files_expire_at),
        updated_at = now()
    WHERE j.job_id = p_job
    RETURNING j.* INTO updated;
    IF p_record THEN
        INSERT INTO orchestrator_handled (entry_id, job_id, emits) VALUES (p_entry, p_job, p_emits)
        ON CONFLICT (entry_id) DO NOTHING;
    END IF;
    RETURN QUERY SELECT 'ok'::text, NULL::bytea, updated;
END;
$$;

