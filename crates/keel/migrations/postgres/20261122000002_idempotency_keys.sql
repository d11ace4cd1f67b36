-- Answers remembered for Idempotency-Key retries. status is NULL while the first request runs.
CREATE TABLE idempotency_keys (
    key             text     NOT NULL PRIMARY KEY,
    request_hash    text     NOT NULL,
    status          integer,
    headers         text,
    body            bytea,
    locked_until_ms bigint   NOT NULL,
    expires_at_ms   bigint   NOT NULL
);

CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at_ms);
