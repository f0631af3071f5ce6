-- Billing that matches the invoice (#24): each provider request the provider bills (a Runway task, a
-- Nexus job, an OpenAI request) is recorded under the call id `<call>@<request id>` (montage_contracts.messages.request_call_id),
-- so `UNIQUE (job_id, call_id)` keeps one row per billed request: a stage retried after the provider
-- billed a request records the new request beside it, the same request reported twice is one row.
-- `request_id` is that provider id, for reconciling `job_costs` with the provider's usage report
-- (NULL for costs that are not a provider request: local compute).
ALTER TABLE job_costs ADD COLUMN IF NOT EXISTS request_id text
    GENERATED ALWAYS AS (NULLIF(split_part(call_id, '@', 2), '')) STORED;
CREATE INDEX IF NOT EXISTS job_costs_request_id ON job_costs (request_id) WHERE request_id IS NOT NULL;
