-- Traces (montage_common.tracing): the W3C traceparent of the span that created the job (the
-- orchestrator's upload or retry request), so a dispatch made outside the job's own messages (its
-- turn given while another job's result is applied, the reconciler, the console) continues the
-- job's trace instead of starting one or joining another's. NULL while tracing is off. Additive.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS traceparent text;
