-- The W3C trace context of the span that enqueued a job, so that the worker's span joins
-- the trace of the request that asked for it (NULL when traces are not exported).
ALTER TABLE jobs ADD COLUMN traceparent text;
