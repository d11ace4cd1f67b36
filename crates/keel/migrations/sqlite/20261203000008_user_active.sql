-- An account an admin deactivated keeps its data but cannot log in, refresh a session or
-- get a password-reset e-mail until it is reactivated (Django's `is_active`).
ALTER TABLE users ADD COLUMN active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1));

-- `active` is part of what clients see of a user: a change of it is a `user.updated` event
-- (which is also how the other instances' caches learn of it), and every user event says it.
DROP TRIGGER users_created;
CREATE TRIGGER users_created AFTER INSERT ON users BEGIN
    INSERT INTO events (type, user_id, data, occurred_at) VALUES (
        'user.created', NEW.id,
        json_object(
            'id', lower(substr(hex(NEW.id), 1, 8) || '-' || substr(hex(NEW.id), 9, 4) || '-' ||
                substr(hex(NEW.id), 13, 4) || '-' || substr(hex(NEW.id), 17, 4) || '-' ||
                substr(hex(NEW.id), 21, 12)),
            'email', NEW.email, 'name', NEW.name, 'role', NEW.role,
            'email_verified', json(CASE WHEN NEW.email_verified_at IS NULL THEN 'false' ELSE 'true' END),
            'active', json(CASE WHEN NEW.active THEN 'true' ELSE 'false' END),
            'version', NEW.version),
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

DROP TRIGGER users_updated;
CREATE TRIGGER users_updated AFTER UPDATE ON users
WHEN OLD.email IS NOT NEW.email OR OLD.name IS NOT NEW.name OR OLD.role IS NOT NEW.role
    OR (OLD.email_verified_at IS NULL) IS NOT (NEW.email_verified_at IS NULL)
    OR OLD.active IS NOT NEW.active
BEGIN
    INSERT INTO events (type, user_id, data, occurred_at) VALUES (
        'user.updated', NEW.id,
        json_object(
            'id', lower(substr(hex(NEW.id), 1, 8) || '-' || substr(hex(NEW.id), 9, 4) || '-' ||
                substr(hex(NEW.id), 13, 4) || '-' || substr(hex(NEW.id), 17, 4) || '-' ||
                substr(hex(NEW.id), 21, 12)),
            'email', NEW.email, 'name', NEW.name, 'role', NEW.role,
            'email_verified', json(CASE WHEN NEW.email_verified_at IS NULL THEN 'false' ELSE 'true' END),
            'active', json(CASE WHEN NEW.active THEN 'true' ELSE 'false' END),
            'version', NEW.version),
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
