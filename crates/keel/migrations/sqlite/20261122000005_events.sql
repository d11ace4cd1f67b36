-- The event log: every change keel makes, appended by triggers in the transaction of the
-- change itself, so an event exists exactly when its change was committed. Ids only grow
-- (AUTOINCREMENT never reuses one), which is what clients resume from.
CREATE TABLE events (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    type        TEXT    NOT NULL,
    -- The account the event is about: its owner may see it. NULL: admins only.
    user_id     BLOB,
    data        TEXT    NOT NULL,
    occurred_at TEXT    NOT NULL
) STRICT;

CREATE INDEX events_occurred_at ON events (occurred_at);

-- Single-use tickets that authenticate a WebSocket or EventSource (browsers cannot set
-- headers on either), kept as SHA-256 hashes only.
CREATE TABLE event_tickets (
    ticket_hash TEXT    NOT NULL PRIMARY KEY,
    user_id     BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        TEXT    NOT NULL,
    session_id  BLOB    NOT NULL,
    expires_at  TEXT    NOT NULL
) STRICT;

-- UUIDs are stored as 16 bytes; events carry them in their usual text form.
CREATE TRIGGER users_created AFTER INSERT ON users BEGIN
    INSERT INTO events (type, user_id, data, occurred_at) VALUES (
        'user.created', NEW.id,
        json_object(
            'id', lower(substr(hex(NEW.id), 1, 8) || '-' || substr(hex(NEW.id), 9, 4) || '-' ||
                substr(hex(NEW.id), 13, 4) || '-' || substr(hex(NEW.id), 17, 4) || '-' ||
                substr(hex(NEW.id), 21, 12)),
            'email', NEW.email, 'name', NEW.name, 'role', NEW.role,
            'email_verified', json(CASE WHEN NEW.email_verified_at IS NULL THEN 'false' ELSE 'true' END),
            'version', NEW.version),
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

-- Only changes a client can see are events (a new password hash is not).
CREATE TRIGGER users_updated AFTER UPDATE ON users
WHEN OLD.email IS NOT NEW.email OR OLD.name IS NOT NEW.name OR OLD.role IS NOT NEW.role
    OR (OLD.email_verified_at IS NULL) IS NOT (NEW.email_verified_at IS NULL)
BEGIN
    INSERT INTO events (type, user_id, data, occurred_at) VALUES (
        'user.updated', NEW.id,
        json_object(
            'id', lower(substr(hex(NEW.id), 1, 8) || '-' || substr(hex(NEW.id), 9, 4) || '-' ||
                substr(hex(NEW.id), 13, 4) || '-' || substr(hex(NEW.id), 17, 4) || '-' ||
                substr(hex(NEW.id), 21, 12)),
            'email', NEW.email, 'name', NEW.name, 'role', NEW.role,
            'email_verified', json(CASE WHEN NEW.email_verified_at IS NULL THEN 'false' ELSE 'true' END),
            'version', NEW.version),
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

CREATE TRIGGER users_deleted AFTER DELETE ON users BEGIN
    INSERT INTO events (type, user_id, data, occurred_at) VALUES (
        'user.deleted', OLD.id,
        json_object(
            'id', lower(substr(hex(OLD.id), 1, 8) || '-' || substr(hex(OLD.id), 9, 4) || '-' ||
                substr(hex(OLD.id), 13, 4) || '-' || substr(hex(OLD.id), 17, 4) || '-' ||
                substr(hex(OLD.id), 21, 12))),
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

CREATE TRIGGER jobs_finished AFTER UPDATE OF state ON jobs
WHEN NEW.state IN ('succeeded', 'dead') AND OLD.state IS NOT NEW.state
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

-- Security events of the audit trail, as `security.<event>`; the account's owner sees them.
CREATE TRIGGER audit_events_recorded AFTER INSERT ON audit_events BEGIN
    INSERT INTO events (type, user_id, data, occurred_at) VALUES (
        'security.' || NEW.event, NEW.user_id,
        json_object(
            'event', NEW.event,
            'user_id', CASE WHEN NEW.user_id IS NULL THEN NULL ELSE
                lower(substr(hex(NEW.user_id), 1, 8) || '-' || substr(hex(NEW.user_id), 9, 4) || '-' ||
                substr(hex(NEW.user_id), 13, 4) || '-' || substr(hex(NEW.user_id), 17, 4) || '-' ||
                substr(hex(NEW.user_id), 21, 12)) END,
            'actor_id', CASE WHEN NEW.actor_id IS NULL THEN NULL ELSE
                lower(substr(hex(NEW.actor_id), 1, 8) || '-' || substr(hex(NEW.actor_id), 9, 4) || '-' ||
                substr(hex(NEW.actor_id), 13, 4) || '-' || substr(hex(NEW.actor_id), 17, 4) || '-' ||
                substr(hex(NEW.actor_id), 21, 12)) END,
            'ip', NEW.ip),
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
