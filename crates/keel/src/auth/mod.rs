//! Access: who is calling and what they may do. The signing keys, access tokens, refresh
//! token sessions, password hashing, roles, and the extractors that guard every route
//! ([`Principal`], [`Admin`]). The routes that use them to register, log in and out are the
//! `accounts` feature's.
//!
//! Access tokens are short-lived EdDSA JWTs that any service can verify with the published
//! keys; refresh tokens are opaque, stored hashed, and rotate on every use.

pub mod keys;
pub mod password;
pub mod sessions;
pub mod tokens;

use std::{sync::Arc, time::Duration};

use axum::extract::{FromRef, FromRequestParts};
use http::{HeaderValue, header, request::Parts};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{config::Config, db::Db, error::ApiError};

pub use tokens::{Principal, Role};

use keys::KeyRing;
use password::{HashError, PasswordHasher};
use sessions::SessionStore;
use tokens::Tokens;

/// The access feature's state: keys and tokens, the password hasher and the sessions. Every
/// router whose routes take a [`Principal`] or an [`Admin`] has an `Arc<Auth>` in its state.
#[derive(Debug)]
pub struct Auth {
    /// Access tokens.
    pub tokens: Tokens,
    /// Argon2id.
    pub passwords: PasswordHasher,
    /// Refresh tokens.
    pub sessions: SessionStore,
}

impl Auth {
    /// Uses `keys` and remembers the sessions revoked while their access tokens may still
    /// be alive (revocations made before a restart keep working).
    pub async fn new(config: &Config, keys: KeyRing, db: Db) -> anyhow::Result<Arc<Self>> {
        let ttl = Duration::from_secs(config.access_token_ttl_secs);
        let tokens = Tokens::new(keys, &config.jwt_issuer, &config.jwt_audience, ttl);
        let sessions = SessionStore::new(db, Duration::from_secs(config.refresh_token_ttl_secs));
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
        tokens.revoke(sessions.revoked_since(since).await?);
        Ok(Arc::new(Self {
            tokens,
            passwords: PasswordHasher::new(config)?,
            sessions,
        }))
    }

    /// A token pair for user `user_id` with `role` in `session` (refresh token given).
    pub fn pair(
        &self,
        user_id: uuid::Uuid,
        role: Role,
        session: uuid::Uuid,
        refresh_token: String,
    ) -> Result<TokenPair, ApiError> {
        Ok(TokenPair {
            access_token: self
                .tokens
                .issue(user_id, role, session)
                .map_err(ApiError::internal)?,
            token_type: "Bearer",
            expires_in: self.tokens.ttl().as_secs(),
            refresh_token,
        })
    }
}

/// An access token and the refresh token to renew it (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// The JWT to send as `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    pub expires_in: u64,
    /// Opaque; exchange it at `/auth/refresh` for a new pair. Single use.
    pub refresh_token: String,
}

impl From<HashError> for ApiError {
    #[track_caller]
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => ApiError::Unavailable {
                detail: "too many password checks are running; try again shortly".to_owned(),
                retry_after_secs: 1,
            },
            HashError::Failed(_) => ApiError::internal(error),
        }
    }
}

const CHALLENGE: &str = r#"Bearer realm="keel""#;
const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer realm="keel", error="invalid_token""#;

/// 401 for a request without credentials.
pub const MISSING_TOKEN: ApiError = ApiError::Unauthorized {
    kind: "/problems/unauthorized",
    detail: "this route needs an access token: send Authorization: Bearer <token>",
    challenge: CHALLENGE,
};

/// 401 for a token that is malformed, forged, expired or revoked.
pub const INVALID_TOKEN: ApiError = ApiError::Unauthorized {
    kind: "/problems/unauthorized",
    detail: "the access token is invalid, expired or revoked; log in or refresh it",
    challenge: INVALID_TOKEN_CHALLENGE,
};

/// The same answer for an unknown e-mail and a wrong password.
pub const INVALID_CREDENTIALS: ApiError = ApiError::Unauthorized {
    kind: "/problems/invalid-credentials",
    detail: "the e-mail address or the password is wrong",
    challenge: CHALLENGE,
};

/// The token of an `Authorization: Bearer <token>` header value, if it is one.
pub fn bearer_token(value: &HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(MISSING_TOKEN)?;
        let token = bearer_token(value).ok_or(INVALID_TOKEN)?;
        Arc::<Auth>::from_ref(state)
            .tokens
            .verify(token)
            .map_err(|error| {
                tracing::debug!(%error, "access token refused");
                INVALID_TOKEN
            })
    }
}

/// An authenticated admin; anyone else gets 401 or 403.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Principal);

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.is_admin() {
            Ok(Self(principal))
        } else {
            Err(ApiError::Forbidden("only an admin may do this"))
        }
    }
}
