//! Accounts: registration, login, refresh, logout, the JWKS (`/auth/*`,
//! `/.well-known/jwks.json`), the e-mail flows (address verification, password reset) and
//! the first admin.
//!
//! It issues and revokes what the `auth` feature verifies, stores users through
//! [`UserStore`], queues its e-mails as jobs and records security events in the audit log.

pub mod bootstrap;
pub mod email_flows;
pub mod email_tokens;
mod routes;

use std::sync::Arc;

use axum::extract::FromRef;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    audit::AuditLog, auth::Auth, db::Db, http::ratelimit::RateLimits, jobs::Jobs,
    users::store::UserStore,
};

/// What the accounts routes reach.
#[derive(Clone)]
pub struct AccountsState {
    /// The database, for the writes that span users, sessions and jobs.
    pub db: Db,
    /// Tokens, passwords and sessions.
    pub auth: Arc<Auth>,
    /// Users' storage.
    pub users: UserStore,
    /// The per-account login limits.
    pub rate_limits: RateLimits,
    /// The queue the e-mails go to.
    pub jobs: Jobs,
    /// The security-event trail.
    pub audit: AuditLog,
}

/// The accounts routes, the e-mail flows' included.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AccountsState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    routes::router().merge(email_flows::router())
}
