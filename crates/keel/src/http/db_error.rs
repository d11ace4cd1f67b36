//! How a database failure reaches a client: `?` on a [`DbError`] in a handler becomes a
//! `503` problem with `Retry-After` while the database is unreachable (the client retries;
//! a load balancer does not mark keel broken), and a `500` problem whose cause is logged
//! with the request id for anything else (see [`ApiError::internal`]).

use crate::{db::DbError, error::ApiError};

/// Seconds a client is asked to wait before retrying while the database is unreachable.
const RETRY_AFTER_SECS: u64 = 1;

impl From<DbError> for ApiError {
    #[track_caller]
    fn from(error: DbError) -> Self {
        if error.is_unavailable() {
            tracing::warn!(%error, "the database is unavailable");
            return Self::Unavailable {
                detail: "the database cannot be reached right now; retry shortly".to_owned(),
                retry_after_secs: RETRY_AFTER_SECS,
            };
        }
        Self::internal(error)
    }
}
