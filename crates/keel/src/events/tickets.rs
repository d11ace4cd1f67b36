//! Single-use, short-lived tickets that authenticate an event stream.
//!
//! Browsers cannot set `Authorization` on a WebSocket or an `EventSource`, so a client
//! trades its access token for a ticket (`POST /events/ticket`) and passes it in the URL.
//! Only the ticket's SHA-256 hash is stored, in the database, so any instance redeems it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    auth::{
        Principal, Role,
        sessions::{digest, new_token},
    },
    db::{Db, DbError, FromRow, Row},
};

/// The tickets' storage.
#[derive(Debug, Clone)]
pub struct Tickets {
    db: Db,
    ttl: Duration,
}

/// The holder of a redeemed ticket.
struct Holder {
    user_id: Uuid,
    role: String,
    session_id: Uuid,
}

impl FromRow for Holder {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok(Self {
            user_id: row.get("user_id")?,
            role: row.get("role")?,
            session_id: row.get("session_id")?,
        })
    }
}

impl Tickets {
    /// Tickets on `db` that expire `ttl` after they are issued.
    pub fn new(db: Db, ttl: Duration) -> Self {
        Self { db, ttl }
    }

    /// Lifetime of a ticket.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket for `principal`.
    pub async fn issue(&self, principal: &Principal) -> Result<String, DbError> {
        let ticket = new_token()?;
        let expires = Utc::now()
            + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::seconds(30));
        self.db
            .execute(
                "INSERT INTO event_tickets (ticket_hash, user_id, role, session_id, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &digest(&ticket),
                    &principal.user_id,
                    &principal.role.as_str().to_owned(),
                    &principal.session,
                    &expires,
                ],
            )
            .await?;
        Ok(ticket)
    }

    /// Spends `ticket`: the principal it was issued to, valid for `lifetime` from now, or
    /// `None` if it is unknown, expired or already spent.
    pub async fn redeem(
        &self,
        ticket: &str,
        lifetime: Duration,
    ) -> Result<Option<Principal>, DbError> {
        let holder: Option<Holder> = self
            .db
            .fetch_optional(
                "DELETE FROM event_tickets WHERE ticket_hash = $1 AND expires_at > $2 \
                 RETURNING user_id, role, session_id",
                &[&digest(ticket), &Utc::now()],
            )
            .await?;
        let expires = Utc::now().timestamp() + i64::try_from(lifetime.as_secs()).unwrap_or(0);
        Ok(holder.and_then(|h| {
            Role::parse(&h.role).map(|role| Principal::new(h.user_id, role, h.session_id, expires))
        }))
    }

    /// Deletes the tickets that expired before `before`.
    pub async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        self.db
            .execute(
                "DELETE FROM event_tickets WHERE expires_at < $1",
                &[&before],
            )
            .await
    }
}
