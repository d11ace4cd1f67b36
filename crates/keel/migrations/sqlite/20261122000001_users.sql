-- Users. Ids are UUIDv7 (time-ordered), so the primary key also orders newest first.
CREATE TABLE users (
    id         BLOB    NOT NULL PRIMARY KEY,
    email      TEXT    NOT NULL CHECK (length(email) <= 254),
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL DEFAULT 1,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
) STRICT;

-- E-mail addresses are unique regardless of case.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
