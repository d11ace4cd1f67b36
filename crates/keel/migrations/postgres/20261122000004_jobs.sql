-- Background jobs. The table is the record of every job on both queue backends: the
-- embedded queue claims rows from it; with RabbitMQ it is also the outbox, whose rows a
-- relay publishes (`published_at`) after the broker confirms them.
CREATE TABLE jobs (
    id              uuid        NOT NULL PRIMARY KEY,
    kind            text        NOT NULL,
    payload         text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL,
    run_at          timestamptz NOT NULL,
    idempotency_key text        UNIQUE,
    lease_owner     uuid,
    lease_until     timestamptz,
    published_at    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    finished_at     timestamptz
);

-- Claiming and relaying: the due rows of a state, oldest first.
CREATE INDEX jobs_state_run_at ON jobs (state, run_at);
CREATE INDEX jobs_kind ON jobs (kind);

-- Single-use tokens sent by e-mail (address verification, password reset), kept as
-- SHA-256 hashes only.
CREATE TABLE email_tokens (
    token_hash text        NOT NULL PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    text        NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    email      text        NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

CREATE INDEX email_tokens_user_id ON email_tokens (user_id);

ALTER TABLE users ADD COLUMN email_verified_at timestamptz;
