-- Accounts: a role and a password (Argon2id PHC string; NULL: the account cannot log in).
ALTER TABLE users ADD COLUMN role text NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user'));
ALTER TABLE users ADD COLUMN password_hash text;

-- One row per refresh token. A family is one login: refreshing spends a row and adds the
-- next one to the same family; presenting a spent row again revokes the whole family.
CREATE TABLE sessions (
    id         uuid        NOT NULL PRIMARY KEY,
    family_id  uuid        NOT NULL,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);

CREATE INDEX sessions_family_id ON sessions (family_id);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- Security events. No foreign keys: the trail outlives the accounts it mentions.
CREATE TABLE audit_events (
    id       uuid        NOT NULL PRIMARY KEY,
    at       timestamptz NOT NULL,
    event    text        NOT NULL,
    user_id  uuid,
    actor_id uuid,
    ip       text,
    detail   text
);
