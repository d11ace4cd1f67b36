//! Webhooks: admins register endpoints for event types, and keel POSTs each matching event
//! to them, signed, retried with backoff, with a delivery log an admin can read and replay.
//!
//! - [`dispatch`] follows the event log on every instance; for each event, one of them
//!   (the one holding the `webhook_cursor` row's lock) records a delivery per matching
//!   endpoint and enqueues its job in the same transaction, then moves the cursor past it.
//! - [`deliver`] is that job: it signs the stored body ([`signing`], Standard Webhooks) and
//!   POSTs it; a failure is an error of the job, so the queue retries it with backoff until
//!   its attempts run out.
//! - [`routes`] is the admin API: `/webhooks` and each endpoint's `/deliveries`.

mod deliver;
mod dispatch;
mod routes;
pub mod signing;
mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

pub use deliver::register_handler;
pub use dispatch::{Dispatcher, run as dispatch};
pub use routes::router;
pub use store::WebhookStore;

/// What the webhook routes reach.
#[derive(Clone)]
pub struct WebhooksState {
    /// Endpoints and deliveries.
    pub db: crate::db::Db,
    /// The queue a replayed delivery goes to.
    pub jobs: crate::jobs::Jobs,
    /// Production refuses plain-HTTP endpoints.
    pub environment: crate::config::Environment,
}

/// The job kind of a delivery.
pub const DELIVER: &str = "webhook.deliver";

/// A registered endpoint, as the admin API shows it (never with its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Webhook {
    /// Time-ordered UUIDv7.
    pub id: Uuid,
    /// Where deliveries are POSTed.
    #[schema(example = "https://hooks.example.com/keel")]
    pub url: String,
    /// The event types delivered: exact names, `prefix.*` or `*`.
    #[schema(example = json!(["user.*", "job.dead"]))]
    pub event_types: Vec<String>,
    /// A note for admins.
    pub description: String,
    /// Whether events are delivered to it.
    pub active: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// An endpoint with the secret its deliveries are signed with: answered when it is
/// registered and when its secret is rotated, and never again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The signing secret (`whsec_` and base64); shown this once only.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwd3Fj6pZ8nTQ=")]
    pub secret: String,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet; attempts may remain.
    Pending,
    /// The endpoint answered 2xx.
    Succeeded,
    /// Out of attempts, or the endpoint was disabled first.
    Failed,
}

impl DeliveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Reads a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One delivery of an event to an endpoint, with the outcome of its last attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// Time-ordered UUIDv7.
    pub id: Uuid,
    /// The endpoint.
    pub webhook_id: Uuid,
    /// The event's id in the log.
    pub event_id: i64,
    /// The event's type.
    #[schema(example = "user.created")]
    pub event_type: String,
    /// The `webhook-id` header: the same for a replay as for the original, so a receiver
    /// can tell it already handled the message.
    pub message_id: Uuid,
    /// The delivery this one replays.
    pub replay_of: Option<Uuid>,
    /// Where it is.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: i32,
    /// The status of the last answer.
    pub response_status: Option<i32>,
    /// The start of the last answer's body (at most 1 KiB).
    pub response_body: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// How long the last attempt took, in milliseconds.
    pub duration_ms: Option<i32>,
    /// The body sent: the event as the streams show it.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When the endpoint accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
}
