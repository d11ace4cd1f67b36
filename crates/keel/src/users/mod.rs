//! The users resource: domain types, storage and routes.

pub mod cache;
pub mod domain;
mod routes;
pub mod store;

use std::sync::Arc;

use crate::{audit::AuditLog, auth::Auth, http::ratelimit::RateLimits, jobs::Jobs};

pub use routes::{UserPage, router};

/// The job kind queued when a user's e-mail address changes; the accounts feature runs it
/// (a verification link to the new address).
pub const VERIFY_ADDRESS_JOB: &str = "email.verify";

/// What the users routes reach.
#[derive(Clone)]
pub struct UsersState {
    /// Users' storage (and its cache).
    pub users: store::UserStore,
    /// Tokens, passwords and sessions: password changes and forced logouts.
    pub auth: Arc<Auth>,
    /// The security-event trail.
    pub audit: AuditLog,
    /// The queue a changed address's verification goes to.
    pub jobs: Jobs,
    /// The per-account limits a password change checks.
    pub rate_limits: RateLimits,
}
