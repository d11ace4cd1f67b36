-- An admin can cancel a job that is still queued (`POST /jobs/{id}/cancel`): it stays in
-- the table, `cancelled`, and no worker runs it (claims require `queued`).
--
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt with the new one
-- (nothing references `jobs`), then its indexes and its trigger are made again.
CREATE TABLE jobs_new (
    id              BLOB    NOT NULL PRIMARY KEY,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    run_at          TEXT    NOT NULL,
    idempotency_key TEXT    UNIQUE,
    lease_owner     BLOB,
    lease_until     TEXT,
    published_at    TEXT,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    finished_at     TEXT,
    traceparent     TEXT
) STRICT;

INSERT INTO jobs_new (id, kind, payload, state, attempts, max_attempts, run_at,
    idempotency_key, lease_owner, lease_until, published_at, last_error, created_at,
    updated_at, finished_at, traceparent)
SELECT id, kind, payload, state, attempts, max_attempts, run_at, idempotency_key,
    lease_owner, lease_until, published_at, last_error, created_at, updated_at, finished_at,
    traceparent
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

-- Claiming and relaying: the due rows of a state, oldest first.
CREATE INDEX jobs_state_run_at ON jobs (state, run_at);
CREATE INDEX jobs_kind ON jobs (kind);

-- A cancelled job is finished too: `job.cancelled` joins `job.succeeded` and `job.dead`.
CREATE TRIGGER jobs_finished AFTER UPDATE OF state ON jobs
WHEN NEW.state IN ('succeeded', 'dead', 'cancelled') AND OLD.state IS NOT NEW.state
BEGIN
    INSERT INTO events (type, user_id, data, occurred_at) VALUES (
        'job.' || NEW.state, NULL,
        json_object(
            'id', lower(substr(hex(NEW.id), 1, 8) || '-' || substr(hex(NEW.id), 9, 4) || '-' ||
                substr(hex(NEW.id), 13, 4) || '-' || substr(hex(NEW.id), 17, 4) || '-' ||
                substr(hex(NEW.id), 21, 12)),
            'kind', NEW.kind, 'attempts', NEW.attempts, 'last_error', NEW.last_error),
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
