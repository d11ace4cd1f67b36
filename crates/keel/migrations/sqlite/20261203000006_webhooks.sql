-- Webhooks: endpoints an admin registers for event types, and every delivery made to them.
CREATE TABLE webhooks (
    id             BLOB    NOT NULL PRIMARY KEY,
    url            TEXT    NOT NULL,
    -- A JSON array of event-type patterns (exact names, `prefix.*`, `*`).
    event_types    TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    -- Signs every delivery (HMAC-SHA256); needed in clear to sign, never shown after creation.
    secret         TEXT    NOT NULL,
    active         INTEGER NOT NULL,
    -- Only events after this one are delivered (the log's newest when it was registered).
    since_event_id INTEGER NOT NULL,
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL
) STRICT;

-- One row per delivery of an event to an endpoint; a replay is a new row (`replay_of`)
-- with the same `message_id`, which receivers use to ignore what they already handled.
CREATE TABLE webhook_deliveries (
    id              BLOB    NOT NULL PRIMARY KEY,
    webhook_id      BLOB    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    message_id      BLOB    NOT NULL,
    -- The exact body sent (the event as streams show it), so a replay sends the same bytes.
    body            TEXT    NOT NULL,
    replay_of       BLOB    REFERENCES webhook_deliveries (id) ON DELETE SET NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    response_status INTEGER,
    response_body   TEXT,
    last_error      TEXT,
    duration_ms     INTEGER,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    delivered_at    TEXT
) STRICT;

-- An event reaches an endpoint once, whichever instance dispatches it.
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (webhook_id, event_id)
    WHERE replay_of IS NULL;
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_created_at ON webhook_deliveries (created_at);
-- Deleting a delivery clears the `replay_of` of its replays: without this index each
-- deleted delivery would scan the whole log (minutes for a webhook with a long one).
CREATE INDEX webhook_deliveries_replay_of ON webhook_deliveries (replay_of);

-- How far the event log has been dispatched to webhooks. Instances take this row's write
-- lock to dispatch, so each event is dispatched by one of them.
CREATE TABLE webhook_cursor (
    id            INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
) STRICT;

INSERT INTO webhook_cursor (id, last_event_id) SELECT 1, COALESCE(MAX(id), 0) FROM events;
