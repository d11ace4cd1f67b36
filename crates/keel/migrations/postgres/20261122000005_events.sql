-- The event log: every change keel makes, appended by triggers in the transaction of the
-- change itself, so an event exists exactly when its change was committed. Ids only grow;
-- clients resume from them. Each insert notifies `keel_events` (delivered on commit) so
-- that every instance reads the new rows at once.
CREATE TABLE events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type        text        NOT NULL,
    -- The account the event is about: its owner may see it. NULL: admins only.
    user_id     uuid,
    data        jsonb       NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX events_occurred_at ON events (occurred_at);

-- Single-use tickets that authenticate a WebSocket or EventSource (browsers cannot set
-- headers on either), kept as SHA-256 hashes only.
CREATE TABLE event_tickets (
    ticket_hash text        NOT NULL PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text        NOT NULL,
    session_id  uuid        NOT NULL,
    expires_at  timestamptz NOT NULL
);

CREATE FUNCTION keel_append_event(kind text, subject uuid, payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, user_id, data) VALUES (kind, subject, payload);
    PERFORM pg_notify('keel_events', '');
END
$$;

CREATE FUNCTION keel_user_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM keel_append_event('user.deleted', OLD.id, jsonb_build_object('id', OLD.id));
        RETURN NULL;
    END IF;
    -- Only changes a client can see are events (a new password hash is not).
    IF TG_OP = 'UPDATE' AND (OLD.email, OLD.name, OLD.role, OLD.email_verified_at IS NULL)
        IS NOT DISTINCT FROM (NEW.email, NEW.name, NEW.role, NEW.email_verified_at IS NULL) THEN
        RETURN NULL;
    END IF;
    PERFORM keel_append_event(
        CASE TG_OP WHEN 'INSERT' THEN 'user.created' ELSE 'user.updated' END, NEW.id,
        jsonb_build_object('id', NEW.id, 'email', NEW.email, 'name', NEW.name, 'role', NEW.role,
            'email_verified', NEW.email_verified_at IS NOT NULL, 'version', NEW.version));
    RETURN NULL;
END
$$;

CREATE TRIGGER users_events AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION keel_user_events();

CREATE FUNCTION keel_job_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM keel_append_event('job.' || NEW.state, NULL,
        jsonb_build_object('id', NEW.id, 'kind', NEW.kind, 'attempts', NEW.attempts,
            'last_error', NEW.last_error));
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_finished AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'dead') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION keel_job_events();

-- Security events of the audit trail, as `security.<event>`; the account's owner sees them.
CREATE FUNCTION keel_audit_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM keel_append_event('security.' || NEW.event, NEW.user_id,
        jsonb_build_object('event', NEW.event, 'user_id', NEW.user_id,
            'actor_id', NEW.actor_id, 'ip', NEW.ip));
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_events_recorded AFTER INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION keel_audit_events();
