//! How a database failure reaches a client: `?` on a [`DbError`] in a handler becomes a 500
//! problem whose cause is logged with the request id (see [`ApiError::internal`]).

use crate::{db::DbError, error::ApiError};

impl From<DbError> for ApiError {
    #[track_caller]
    fn from(error: DbError) -> Self {
        Self::internal(error)
    }
}
