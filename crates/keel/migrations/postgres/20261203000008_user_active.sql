-- An account an admin deactivated keeps its data but cannot log in, refresh a session or
-- get a password-reset e-mail until it is reactivated (Django's `is_active`).
ALTER TABLE users ADD COLUMN active boolean NOT NULL DEFAULT true;

-- `active` is part of what clients see of a user: a change of it is a `user.updated` event
-- (which is also how the other instances' caches learn of it), and every user event says it.
CREATE OR REPLACE FUNCTION keel_user_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM keel_append_event('user.deleted', OLD.id, jsonb_build_object('id', OLD.id));
        RETURN NULL;
    END IF;
    -- Only changes a client can see are events (a new password hash is not).
    IF TG_OP = 'UPDATE'
        AND (OLD.email, OLD.name, OLD.role, OLD.email_verified_at IS NULL, OLD.active)
        IS NOT DISTINCT FROM (NEW.email, NEW.name, NEW.role, NEW.email_verified_at IS NULL, NEW.active) THEN
        RETURN NULL;
    END IF;
    PERFORM keel_append_event(
        CASE TG_OP WHEN 'INSERT' THEN 'user.created' ELSE 'user.updated' END, NEW.id,
        jsonb_build_object('id', NEW.id, 'email', NEW.email, 'name', NEW.name, 'role', NEW.role,
            'email_verified', NEW.email_verified_at IS NOT NULL, 'active', NEW.active,
            'version', NEW.version));
    RETURN NULL;
END
$$;
