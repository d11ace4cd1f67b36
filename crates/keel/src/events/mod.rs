//! Domain events: every change keel makes, streamed to clients.
//!
//! Database triggers append each change (`user.created`, `user.updated`, `user.deleted`,
//! `job.succeeded`, `job.dead`, `job.cancelled`, `security.<audit event>`) to the `events`
//! table in the transaction of the change, so an event exists exactly when its change was committed,
//! whichever code path made it. Each instance tails that log ([`hub`]) and fans new events
//! out to its connections: `GET /events` (Server-Sent Events) and `GET /events/ws`
//! (WebSocket), both of which resume from an event id.

pub mod hub;
mod routes;
pub(crate) mod stream;
pub mod tickets;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::{Auth, Principal},
    db::{Db, DbError, FromRow, Row, Tx},
    metrics::Metrics,
    shutdown::Shutdown,
};

pub use hub::EventHub;
pub use routes::router;
pub use stream::{MAX_PATTERNS, Patterns};

/// What the event streams reach.
#[derive(Clone)]
pub struct EventsState {
    /// New events, fanned out to the streams.
    pub events: EventHub,
    /// Tickets that open event streams.
    pub events_tickets: tickets::Tickets,
    /// Verifies tokens, and tells when a stream's session was revoked.
    pub auth: Arc<Auth>,
    /// Streams end when shutdown begins.
    pub shutdown: Shutdown,
    /// Open streams are counted here, when metrics are on.
    pub metrics: Option<Arc<Metrics>>,
    /// Streams this instance holds at most.
    pub max_connections: usize,
    /// Seconds between heartbeats on an idle stream.
    pub heartbeat_secs: u64,
}

/// One event as clients receive it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Event {
    /// Position in the log: ids only grow, and a client resumes after the last it saw.
    pub id: i64,
    /// What happened, such as `user.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it was committed.
    pub occurred_at: DateTime<Utc>,
    /// The changed resource as it became (for a deletion, its id).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A stored event, with who may see it and its wire form, encoded once for every client.
#[derive(Debug)]
pub struct Published {
    /// The log position.
    pub id: i64,
    /// The event type.
    pub kind: String,
    /// The account the event is about; `None`: admins only.
    pub user_id: Option<Uuid>,
    /// The [`Event`] as JSON.
    pub json: Arc<str>,
}

impl Published {
    /// Whether `principal` may see this event: admins see all, users their own account's.
    pub fn visible_to(&self, principal: &Principal) -> bool {
        principal.is_admin() || self.user_id == Some(principal.user_id)
    }
}

impl FromRow for Published {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        let data: String = row.get("data")?;
        let event = Event {
            id: row.get("id")?,
            kind: row.get("type")?,
            occurred_at: row.get("occurred_at")?,
            data: serde_json::from_str(&data).map_err(|e| DbError::Corrupt(e.to_string()))?,
        };
        let json = serde_json::to_string(&event).map_err(|e| DbError::Corrupt(e.to_string()))?;
        Ok(Self {
            id: event.id,
            kind: event.kind,
            user_id: row.get("user_id")?,
            json: json.into(),
        })
    }
}

/// The events after `$1`, at most `$2`, oldest first.
const AFTER: &str = "SELECT id, type, user_id, CAST(data AS TEXT) AS data, occurred_at FROM events \
    WHERE id > $1 ORDER BY id LIMIT $2";

/// The event log's storage.
#[derive(Debug, Clone)]
pub struct EventLog {
    db: Db,
}

impl EventLog {
    /// The log in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Up to `limit` events after `after`, oldest first.
    pub async fn after(&self, after: i64, limit: i64) -> Result<Vec<Published>, DbError> {
        self.db.fetch_all(AFTER, &[&after, &limit]).await
    }

    /// [`EventLog::after`], read in `tx`.
    pub async fn after_in(tx: &mut Tx, after: i64, limit: i64) -> Result<Vec<Published>, DbError> {
        tx.fetch_all(AFTER, &[&after, &limit]).await
    }

    /// The newest event's id; 0 when the log is empty.
    pub async fn latest_id(&self) -> Result<i64, DbError> {
        let (id,): (Option<i64>,) = self.db.fetch_one("SELECT MAX(id) FROM events", &[]).await?;
        Ok(id.unwrap_or(0))
    }

    /// Deletes the events that occurred before `before`.
    pub async fn purge(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        self.db
            .execute("DELETE FROM events WHERE occurred_at < $1", &[&before])
            .await
    }
}
