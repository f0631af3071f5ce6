-- Previews (issue #25): the files of a job a page can show, as they were stored. A reference still
-- (kind 'still', subject 'scene' or 'character') or a clip ('clip') is listed when its worker reports
-- its preview copy (``StagePreview``); the final video's frame ('poster') when the job completes.
-- The final video itself is jobs.video_key. ``GET /api/v1/jobs/{id}/assets`` reads this table.
-- The rows go with their job (ON DELETE CASCADE); a cancel drops the previews with their files.
CREATE TABLE IF NOT EXISTS job_assets (
    job_id      uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('still', 'clip', 'poster')),
    subject     text NOT NULL DEFAULT '' CHECK (subject IN ('', 'scene', 'character')),
    idx         integer NOT NULL CHECK (idx >= 0),
    storage_key text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, kind, subject, idx)
);
