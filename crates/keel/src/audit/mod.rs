//! The audit trail of security events: each is a structured log line (target
//! `keel::audit`) and a row an admin can page through at `GET /admin/audit-events`.

mod routes;

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    db::{Db, DbError, FromRow, Row},
    http::pagination::Cursor,
};

pub use routes::{AuditPage, router};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum AuditKind {
    /// An account was registered.
    #[serde(rename = "account.registered")]
    Registered,
    /// An admin account was created (CLI, bootstrap or an admin).
    #[serde(rename = "account.created")]
    Created,
    /// A login succeeded.
    #[serde(rename = "login.succeeded")]
    LoginSucceeded,
    /// An admin deactivated an account: its sessions ended and it cannot log in.
    #[serde(rename = "account.deactivated")]
    Deactivated,
    /// An admin reactivated an account: it can log in again.
    #[serde(rename = "account.reactivated")]
    Reactivated,
    /// A login failed (unknown e-mail, wrong password, or a deactivated account).
    #[serde(rename = "login.failed")]
    LoginFailed,
    /// A spent refresh token was presented again; its session family was revoked.
    #[serde(rename = "refresh.reused")]
    RefreshReused,
    /// A session was ended.
    #[serde(rename = "logout")]
    Logout,
    /// Every session of an account was ended (by its owner, or by an admin: then
    /// `actor_id` names the admin).
    #[serde(rename = "logout.all")]
    LogoutAll,
    /// A password was changed.
    #[serde(rename = "password.changed")]
    PasswordChanged,
    /// A role was changed.
    #[serde(rename = "role.changed")]
    RoleChanged,
    /// A password was reset with a token sent by e-mail; every session was ended.
    #[serde(rename = "password.reset")]
    PasswordReset,
    /// An e-mail address was verified with a token sent to it.
    #[serde(rename = "email.verified")]
    EmailVerified,
}

impl AuditKind {
    /// Every kind, in the order of their declaration.
    pub const ALL: [AuditKind; 13] = [
        Self::Registered,
        Self::Created,
        Self::LoginSucceeded,
        Self::Deactivated,
        Self::Reactivated,
        Self::LoginFailed,
        Self::RefreshReused,
        Self::Logout,
        Self::LogoutAll,
        Self::PasswordChanged,
        Self::RoleChanged,
        Self::PasswordReset,
        Self::EmailVerified,
    ];

    /// The stored and logged name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "account.registered",
            Self::Created => "account.created",
            Self::Deactivated => "account.deactivated",
            Self::Reactivated => "account.reactivated",
            Self::LoginSucceeded => "login.succeeded",
            Self::LoginFailed => "login.failed",
            Self::RefreshReused => "refresh.reused",
            Self::Logout => "logout",
            Self::LogoutAll => "logout.all",
            Self::PasswordChanged => "password.changed",
            Self::RoleChanged => "role.changed",
            Self::PasswordReset => "password.reset",
            Self::EmailVerified => "email.verified",
        }
    }
}

/// One security event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEvent {
    /// Time-ordered id.
    pub id: Uuid,
    /// When it happened, RFC 3339 UTC.
    pub at: DateTime<Utc>,
    /// What happened: `login.succeeded`, `login.failed`, `refresh.reused`, ...
    #[schema(example = "login.failed")]
    pub event: String,
    /// The account concerned, when known.
    pub user_id: Option<Uuid>,
    /// Who did it, when not the account itself (an admin changing a role).
    pub actor_id: Option<Uuid>,
    /// The client's address.
    pub ip: Option<String>,
    /// More about it (never a secret).
    pub detail: Option<String>,
}

impl FromRow for AuditEvent {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get("id")?,
            at: row.get("at")?,
            event: row.get("event")?,
            user_id: row.get("user_id")?,
            actor_id: row.get("actor_id")?,
            ip: row.get("ip")?,
            detail: row.get("detail")?,
        })
    }
}

/// Which events a page lists.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this kind of event (`login.failed`, ...).
    pub event: Option<String>,
    /// Only events about this account or done by it.
    pub user_id: Option<Uuid>,
}

/// An event about to be recorded.
#[derive(Debug, Clone)]
pub struct Audit {
    kind: AuditKind,
    user_id: Option<Uuid>,
    actor_id: Option<Uuid>,
    ip: Option<IpAddr>,
    detail: Option<String>,
}

impl Audit {
    /// `kind` happened to `user_id`, from `ip`.
    pub fn new(kind: AuditKind, user_id: Option<Uuid>, ip: Option<IpAddr>) -> Self {
        Self {
            kind,
            user_id,
            actor_id: None,
            ip,
            detail: None,
        }
    }

    /// Done by `actor`.
    pub fn by(mut self, actor: Uuid) -> Self {
        self.actor_id = Some(actor);
        self
    }

    /// With an explanation.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Records security events.
#[derive(Debug, Clone)]
pub struct AuditLog {
    db: Db,
}

impl AuditLog {
    /// The trail on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Logs the event and stores it. A failed write is logged, never the caller's failure:
    /// the log line carries the event either way.
    pub async fn record(&self, event: Audit) {
        let ip = event.ip.map(|ip| ip.to_string());
        tracing::info!(
            target: "keel::audit",
            event = event.kind.as_str(),
            user_id = event.user_id.map(tracing::field::display),
            actor_id = event.actor_id.map(tracing::field::display),
            ip = ip.as_deref(),
            detail = event.detail.as_deref(),
            "security event"
        );
        let result = self
            .db
            .execute(
                "INSERT INTO audit_events (id, at, event, user_id, actor_id, ip, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &Uuid::now_v7(),
                    &crate::db::now(),
                    &event.kind.as_str().to_owned(),
                    &event.user_id,
                    &event.actor_id,
                    &ip,
                    &event.detail,
                ],
            )
            .await;
        if let Err(error) = result {
            tracing::error!(%error, event = event.kind.as_str(), "cannot store an audit event");
        }
    }

    /// A page of the events `filter` selects, newest first, and whether more follow.
    pub async fn page(
        &self,
        limit: u32,
        after: Option<Cursor>,
        filter: &AuditFilter,
    ) -> Result<(Vec<AuditEvent>, bool), DbError> {
        let fetch = i64::from(limit) + 1;
        let after = after.map(|Cursor(id)| id);
        // One statement for every combination: an absent filter is a NULL parameter (each
        // compared with a column first, which is where PostgreSQL learns its type).
        let mut rows: Vec<AuditEvent> = self
            .db
            .fetch_all(
                "SELECT id, at, event, user_id, actor_id, ip, detail FROM audit_events \
                 WHERE (id < $1 OR $1 IS NULL) AND (event = $2 OR $2 IS NULL) \
                 AND (user_id = $3 OR actor_id = $3 OR $3 IS NULL) \
                 ORDER BY id DESC LIMIT $4",
                &[&after, &filter.event, &filter.user_id, &fetch],
            )
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }
}
