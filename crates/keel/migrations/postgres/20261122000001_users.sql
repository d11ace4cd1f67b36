-- Users. Ids are UUIDv7 (time-ordered), so the primary key also orders newest first.
CREATE TABLE users (
    id         uuid        NOT NULL PRIMARY KEY,
    email      text        NOT NULL CHECK (char_length(email) <= 254),
    name       text        NOT NULL,
    version    bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

-- E-mail addresses are unique regardless of case.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
