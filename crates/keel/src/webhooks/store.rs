//! The `webhooks`, `webhook_deliveries` and `webhook_cursor` tables.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::{
    db::{Db, DbError, FromRow, Param, Row, Tx, now},
    events::{Patterns, Published},
    http::pagination::Cursor,
    jobs::{JobError, Jobs, NewJob},
};

use super::{CreatedWebhook, DELIVER, Delivery, DeliveryState, Webhook, signing};

const WEBHOOK_COLUMNS: &str = "id, url, event_types, description, active, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, message_id, replay_of, \
    state, attempts, response_status, response_body, last_error, duration_ms, body, \
    created_at, updated_at, delivered_at";

/// A validated registration.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Where deliveries go.
    pub url: String,
    /// Which events.
    pub event_types: Patterns,
    /// A note for admins.
    pub description: String,
    /// Whether it receives events from now on.
    pub active: bool,
}

/// A validated change: absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct WebhookChanges {
    /// New URL.
    pub url: Option<String>,
    /// New event types.
    pub event_types: Option<Patterns>,
    /// New note.
    pub description: Option<String>,
    /// Turns deliveries on or off.
    pub active: Option<bool>,
}

/// An active endpoint, as the dispatcher matches events against it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The endpoint.
    pub id: Uuid,
    /// The types it wants.
    pub patterns: Patterns,
    /// Only events after this one are its.
    pub since_event_id: i64,
}

/// What a delivery attempt needs.
#[derive(Debug, Clone)]
pub struct Sending {
    /// The `webhook-id` header.
    pub message_id: Uuid,
    /// The body.
    pub body: String,
    /// Where it is.
    pub state: DeliveryState,
    /// The endpoint's URL.
    pub url: String,
    /// The endpoint's secret.
    pub secret: String,
    /// Whether the endpoint still takes deliveries.
    pub active: bool,
}

/// How an attempt went.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The state it leaves the delivery in.
    pub state: DeliveryState,
    /// The answer's status, if there was one.
    pub response_status: Option<i32>,
    /// The start of the answer's body.
    pub response_body: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i32,
}

fn patterns_from(raw: &str) -> Result<Patterns, DbError> {
    let list: Vec<String> = serde_json::from_str(raw)
        .map_err(|e| DbError::Corrupt(format!("webhook event types: {e}")))?;
    Patterns::parse(list.iter().map(String::as_str))
        .map_err(|e| DbError::Corrupt(format!("webhook event types: {e}")))
}

fn patterns_json(patterns: &Patterns) -> String {
    json!(patterns.as_slice()).to_string()
}

impl FromRow for Webhook {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        let event_types: String = row.get("event_types")?;
        Ok(Self {
            id: row.get("id")?,
            url: row.get("url")?,
            event_types: patterns_from(&event_types)?.as_slice().to_vec(),
            description: row.get("description")?,
            active: row.get("active")?,
            created_at: row.get("created_at")?,
            updated_at: row.get("updated_at")?,
        })
    }
}

fn delivery_state(raw: &str) -> Result<DeliveryState, DbError> {
    DeliveryState::parse(raw)
        .ok_or_else(|| DbError::Corrupt(format!("unknown delivery state {raw:?}")))
}

impl FromRow for Delivery {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        let state: String = row.get("state")?;
        let body: String = row.get("body")?;
        Ok(Self {
            id: row.get("id")?,
            webhook_id: row.get("webhook_id")?,
            event_id: row.get("event_id")?,
            event_type: row.get("event_type")?,
            message_id: row.get("message_id")?,
            replay_of: row.get("replay_of")?,
            state: delivery_state(&state)?,
            attempts: row.get("attempts")?,
            response_status: row.get("response_status")?,
            response_body: row.get("response_body")?,
            last_error: row.get("last_error")?,
            duration_ms: row.get("duration_ms")?,
            payload: serde_json::from_str(&body)
                .map_err(|e| DbError::Corrupt(format!("delivery body: {e}")))?,
            created_at: row.get("created_at")?,
            updated_at: row.get("updated_at")?,
            delivered_at: row.get("delivered_at")?,
        })
    }
}

impl FromRow for Target {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        let event_types: String = row.get("event_types")?;
        Ok(Self {
            id: row.get("id")?,
            patterns: patterns_from(&event_types)?,
            since_event_id: row.get("since_event_id")?,
        })
    }
}

impl FromRow for Sending {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        let state: String = row.get("state")?;
        Ok(Self {
            message_id: row.get("message_id")?,
            body: row.get("body")?,
            state: delivery_state(&state)?,
            url: row.get("url")?,
            secret: row.get("secret")?,
            active: row.get("active")?,
        })
    }
}

/// Why a webhook could not be registered or a delivery replayed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The delivery's job could not be enqueued.
    #[error(transparent)]
    Job(#[from] JobError),
    /// No secret could be generated.
    #[error("cannot generate a webhook secret: {0}")]
    Random(#[from] getrandom::Error),
}

/// The webhook tables.
#[derive(Debug, Clone)]
pub struct WebhookStore {
    db: Db,
}

impl WebhookStore {
    /// The tables on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Registers an endpoint for the events that follow the log's newest.
    pub async fn create(&self, new: NewWebhook) -> Result<CreatedWebhook, StoreError> {
        let id = Uuid::now_v7();
        let secret = signing::new_secret()?;
        let now = now();
        let event_types = patterns_json(&new.event_types);
        let webhook: Webhook = self
            .db
            .fetch_one(
                &format!(
                    "INSERT INTO webhooks (id, url, event_types, description, secret, active, \
                     since_event_id, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, \
                     (SELECT COALESCE(MAX(id), 0) FROM events), $7, $7) \
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[
                    &id,
                    &new.url,
                    &event_types,
                    &new.description,
                    &secret,
                    &new.active,
                    &now,
                ],
            )
            .await?;
        Ok(CreatedWebhook { webhook, secret })
    }

    /// A page of endpoints, newest first, and whether more follow.
    pub async fn list(
        &self,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<(Vec<Webhook>, bool), DbError> {
        let fetch = i64::from(limit) + 1;
        let after = after.map(|cursor| cursor.0);
        let mut sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks");
        let mut params: Vec<&dyn Param> = Vec::new();
        if let Some(after) = &after {
            params.push(after);
            sql.push_str(" WHERE id < $1");
        }
        params.push(&fetch);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let mut rows: Vec<Webhook> = self.db.fetch_all(&sql, &params).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }

    /// Endpoint `id`.
    pub async fn get(&self, id: Uuid) -> Result<Option<Webhook>, DbError> {
        self.db
            .fetch_optional(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"),
                &[&id],
            )
            .await
    }

    /// Applies `changes` to endpoint `id`; `None` when there is none.
    pub async fn update(
        &self,
        id: Uuid,
        changes: &WebhookChanges,
    ) -> Result<Option<Webhook>, DbError> {
        let now = now();
        let event_types = changes.event_types.as_ref().map(patterns_json);
        let mut params: Vec<&dyn Param> = vec![&now];
        let mut sets = vec!["updated_at = $1".to_owned()];
        let fields: [(&str, Option<&dyn Param>); 4] = [
            ("url", changes.url.as_ref().map(|v| v as &dyn Param)),
            ("event_types", event_types.as_ref().map(|v| v as &dyn Param)),
            (
                "description",
                changes.description.as_ref().map(|v| v as &dyn Param),
            ),
            ("active", changes.active.as_ref().map(|v| v as &dyn Param)),
        ];
        for (column, value) in fields.into_iter() {
            if let Some(value) = value {
                params.push(value);
                sets.push(format!("{column} = ${}", params.len()));
            }
        }
        params.push(&id);
        let sql = format!(
            "UPDATE webhooks SET {} WHERE id = ${} RETURNING {WEBHOOK_COLUMNS}",
            sets.join(", "),
            params.len()
        );
        self.db.fetch_optional(&sql, &params).await
    }

    /// Deletes endpoint `id` and its delivery log; `false` when there was none.
    pub async fn delete(&self, id: Uuid) -> Result<bool, DbError> {
        let mut tx = self.db.begin().await?;
        // Replays first point at themselves: otherwise deleting an original clears their
        // `replay_of` while they still exist, and two replays of one event then break the
        // one-original-per-event index before the cascade reaches them.
        tx.execute(
            "UPDATE webhook_deliveries SET replay_of = id \
             WHERE webhook_id = $1 AND replay_of IS NOT NULL",
            &[&id],
        )
        .await?;
        let deleted = tx
            .execute("DELETE FROM webhooks WHERE id = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Gives endpoint `id` a new signing secret, answered with the endpoint; `None` when
    /// there is none. Every attempt from now on is signed with it (an attempt reads the
    /// secret when it starts), so the old one stops signing at once.
    pub async fn rotate_secret(&self, id: Uuid) -> Result<Option<CreatedWebhook>, StoreError> {
        let secret = signing::new_secret()?;
        let webhook: Option<Webhook> = self
            .db
            .fetch_optional(
                &format!(
                    "UPDATE webhooks SET secret = $1, updated_at = $2 WHERE id = $3 \
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[&secret, &now(), &id],
            )
            .await?;
        Ok(webhook.map(|webhook| CreatedWebhook { webhook, secret }))
    }

    /// How many endpoints are registered, active or not.
    pub async fn count(&self) -> Result<i64, DbError> {
        let (count,): (i64,) = self
            .db
            .fetch_one("SELECT COUNT(*) FROM webhooks", &[])
            .await?;
        Ok(count)
    }

    /// How many active endpoints have a most recent delivery (original or replay, newest
    /// by id) that [`DeliveryState::Failed`]: the endpoints an admin should look at. An
    /// endpoint whose newest delivery is still pending or succeeded is not counted.
    pub async fn failing(&self) -> Result<i64, DbError> {
        let (count,): (i64,) = self
            .db
            .fetch_one(
                "SELECT COUNT(*) FROM webhooks w WHERE w.active = $1 AND \
                 (SELECT d.state FROM webhook_deliveries d WHERE d.webhook_id = w.id \
                 ORDER BY d.id DESC LIMIT 1) = 'failed'",
                &[&true],
            )
            .await?;
        Ok(count)
    }

    /// A page of endpoint `webhook_id`'s deliveries, newest first, and whether more follow.
    pub async fn deliveries(
        &self,
        webhook_id: Uuid,
        state: Option<DeliveryState>,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<(Vec<Delivery>, bool), DbError> {
        let fetch = i64::from(limit) + 1;
        let after = after.map(|cursor| cursor.0);
        let state = state.map(|state| state.as_str().to_owned());
        let mut sql =
            format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1");
        let mut params: Vec<&dyn Param> = vec![&webhook_id];
        if let Some(state) = &state {
            params.push(state);
            sql.push_str(&format!(" AND state = ${}", params.len()));
        }
        if let Some(after) = &after {
            params.push(after);
            sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        params.push(&fetch);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let mut rows: Vec<Delivery> = self.db.fetch_all(&sql, &params).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }

    /// Delivery `id` of endpoint `webhook_id`.
    pub async fn delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>, DbError> {
        self.db
            .fetch_optional(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
                     WHERE webhook_id = $1 AND id = $2"
                ),
                &[&webhook_id, &id],
            )
            .await
    }

    /// Sends delivery `id` of endpoint `webhook_id` again, as a new delivery with the same
    /// message id and body; `None` when there is no such delivery.
    pub async fn replay(
        &self,
        jobs: &Jobs,
        webhook_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Delivery>, StoreError> {
        let mut tx = self.db.begin().await?;
        let new_id = Uuid::now_v7();
        let now = now();
        let inserted: Option<Delivery> = tx
            .fetch_optional(
                &format!(
                    "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, \
                     message_id, body, replay_of, state, attempts, created_at, updated_at) \
                     SELECT $1, webhook_id, event_id, event_type, message_id, body, id, \
                     'pending', 0, $2, $2 FROM webhook_deliveries \
                     WHERE webhook_id = $3 AND id = $4 \
                     RETURNING {DELIVERY_COLUMNS}"
                ),
                &[&new_id, &now, &webhook_id, &id],
            )
            .await?;
        let Some(delivery) = inserted else {
            return Ok(None);
        };
        enqueue(jobs, &mut tx, delivery.id).await?;
        tx.commit().await?;
        jobs.wake();
        Ok(Some(delivery))
    }

    /// Deletes deliveries recorded before `before`.
    pub async fn purge(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        self.db
            .execute(
                "DELETE FROM webhook_deliveries WHERE created_at < $1",
                &[&before],
            )
            .await
    }

    /// How far the log has been dispatched, without waiting for the lock.
    pub(super) async fn cursor(&self) -> Result<i64, DbError> {
        let (id,): (i64,) = self
            .db
            .fetch_one("SELECT last_event_id FROM webhook_cursor WHERE id = 1", &[])
            .await?;
        Ok(id)
    }

    /// Begins a dispatch: takes the cursor's lock (until `tx` ends) and reads it.
    pub(super) async fn lock_cursor(&self, tx: &mut Tx) -> Result<i64, DbError> {
        let (id,): (i64,) = tx
            .fetch_optional(
                "UPDATE webhook_cursor SET last_event_id = last_event_id WHERE id = 1 \
                 RETURNING last_event_id",
                &[],
            )
            .await?
            .ok_or(DbError::NoRow)?;
        Ok(id)
    }

    /// Moves the cursor to `id` within `tx`.
    pub(super) async fn set_cursor(&self, tx: &mut Tx, id: i64) -> Result<(), DbError> {
        tx.execute(
            "UPDATE webhook_cursor SET last_event_id = $1 WHERE id = 1 AND last_event_id < $1",
            &[&id],
        )
        .await?;
        Ok(())
    }

    /// The active endpoints.
    pub(super) async fn targets(&self, tx: &mut Tx) -> Result<Vec<Target>, DbError> {
        tx.fetch_all(
            "SELECT id, event_types, since_event_id FROM webhooks WHERE active = $1",
            &[&true],
        )
        .await
    }

    /// Records the delivery of `event` to `webhook_id` and enqueues its job, in `tx`;
    /// nothing when it was already recorded.
    pub(super) async fn record(
        &self,
        jobs: &Jobs,
        tx: &mut Tx,
        webhook_id: Uuid,
        event: &Published,
    ) -> Result<(), StoreError> {
        let id = Uuid::now_v7();
        let now = now();
        let body = event.json.to_string();
        let inserted: Option<(Uuid,)> = tx
            .fetch_optional(
                "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, \
                 message_id, body, state, attempts, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $1, $5, 'pending', 0, $6, $6) \
                 ON CONFLICT (webhook_id, event_id) WHERE replay_of IS NULL DO NOTHING \
                 RETURNING id",
                &[&id, &webhook_id, &event.id, &event.kind, &body, &now],
            )
            .await?;
        if inserted.is_some() {
            enqueue(jobs, tx, id).await?;
        }
        Ok(())
    }

    /// What sending delivery `id` needs; `None` when it (or its endpoint) is gone.
    pub(super) async fn sending(&self, id: Uuid) -> Result<Option<Sending>, DbError> {
        self.db
            .fetch_optional(
                "SELECT d.message_id, d.body, d.state, w.url, w.secret, w.active \
                 FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
                 WHERE d.id = $1",
                &[&id],
            )
            .await
    }

    /// Records an attempt at delivery `id`.
    pub(super) async fn record_attempt(&self, id: Uuid, attempt: &Attempt) -> Result<(), DbError> {
        let now = now();
        let delivered_at = (attempt.state == DeliveryState::Succeeded).then_some(now);
        let state = attempt.state.as_str().to_owned();
        self.db
            .execute(
                "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
                 response_status = $2, response_body = $3, last_error = $4, duration_ms = $5, \
                 updated_at = $6, delivered_at = $7 WHERE id = $8 AND state = 'pending'",
                &[
                    &state,
                    &attempt.response_status,
                    &attempt.response_body,
                    &attempt.error,
                    &attempt.duration_ms,
                    &now,
                    &delivered_at,
                    &id,
                ],
            )
            .await?;
        Ok(())
    }
}

async fn enqueue(jobs: &Jobs, tx: &mut Tx, delivery: Uuid) -> Result<(), JobError> {
    jobs.enqueue_in(
        tx,
        NewJob::new(DELIVER, json!({ "delivery_id": delivery }))
            .idempotency_key(format!("{DELIVER}:{delivery}")),
    )
    .await?;
    Ok(())
}
