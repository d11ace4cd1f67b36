-- Answers remembered for Idempotency-Key retries. status is NULL while the first request runs.
CREATE TABLE idempotency_keys (
    key             TEXT    NOT NULL PRIMARY KEY,
    request_hash    TEXT    NOT NULL,
    status          INTEGER,
    headers         TEXT,
    body            BLOB,
    locked_until_ms INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL
) STRICT;

CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at_ms);
