-- A user's default webhook URL (POST/GET/DELETE /api/v1/webhook): an upload without a
-- `webhook_url` field takes it (montage_orchestrator.webhooks). Checked by the SSRF rules when set,
-- and again before every delivery.
CREATE TABLE user_webhooks (
    user_id           text PRIMARY KEY,
    url               text NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
