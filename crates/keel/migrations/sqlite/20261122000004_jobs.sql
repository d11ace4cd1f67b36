-- Background jobs. The table is the record of every job on both queue backends: the
-- embedded queue claims rows from it; with RabbitMQ it is also the outbox, whose rows a
-- relay publishes (`published_at`) after the broker confirms them.
CREATE TABLE jobs (
    id              BLOB    NOT NULL PRIMARY KEY,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'dead')),
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
    finished_at     TEXT
) STRICT;

-- Claiming and relaying: the due rows of a state, oldest first.
CREATE INDEX jobs_state_run_at ON jobs (state, run_at);
CREATE INDEX jobs_kind ON jobs (kind);

-- Single-use tokens sent by e-mail (address verification, password reset), kept as
-- SHA-256 hashes only.
CREATE TABLE email_tokens (
    token_hash TEXT NOT NULL PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    email      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT
) STRICT;

CREATE INDEX email_tokens_user_id ON email_tokens (user_id);

ALTER TABLE users ADD COLUMN email_verified_at TEXT;
