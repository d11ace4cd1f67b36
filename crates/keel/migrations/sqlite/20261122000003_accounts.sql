-- Accounts: a role and a password (Argon2id PHC string; NULL: the account cannot log in).
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user'));
ALTER TABLE users ADD COLUMN password_hash TEXT;

-- One row per refresh token. A family is one login: refreshing spends a row and adds the
-- next one to the same family; presenting a spent row again revokes the whole family.
CREATE TABLE sessions (
    id         BLOB NOT NULL PRIMARY KEY,
    family_id  BLOB NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    revoked_at TEXT
) STRICT;

CREATE INDEX sessions_family_id ON sessions (family_id);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- Security events. No foreign keys: the trail outlives the accounts it mentions.
CREATE TABLE audit_events (
    id       BLOB NOT NULL PRIMARY KEY,
    at       TEXT NOT NULL,
    event    TEXT NOT NULL,
    user_id  BLOB,
    actor_id BLOB,
    ip       TEXT,
    detail   TEXT
) STRICT;
