//! Single-use, expiring tokens sent by e-mail (address verification, password reset),
//! stored only as SHA-256 hashes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{Db, DbError, FromRow, Row, Tx};

use crate::auth::sessions::{digest, new_token};

/// What a token is for; a token of one purpose is worthless for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Proves the address belongs to the account.
    VerifyEmail,
    /// Lets the address's owner choose a new password.
    ResetPassword,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }
}

/// Whom a valid token was sent to.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The account.
    pub user_id: Uuid,
    /// The address the token was sent to.
    pub email: String,
}

impl FromRow for Holder {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok(Self {
            user_id: row.get("user_id")?,
            email: row.get("email")?,
        })
    }
}

/// The tokens' storage.
#[derive(Debug, Clone)]
pub struct EmailTokens {
    db: Db,
}

impl EmailTokens {
    /// Tokens on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// A new token for `purpose`, sent to `email` of `user_id`, valid for `ttl`; returns
    /// the token and its expiry.
    pub async fn issue(
        &self,
        user_id: Uuid,
        purpose: Purpose,
        email: &str,
        ttl: Duration,
    ) -> Result<(String, DateTime<Utc>), DbError> {
        let token = new_token()?;
        let now = crate::db::now();
        let expires_at = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.db
            .execute(
                "INSERT INTO email_tokens (token_hash, user_id, purpose, email, created_at, \
                 expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &digest(&token),
                    &user_id,
                    &purpose.as_str().to_owned(),
                    &email.to_owned(),
                    &now,
                    &expires_at,
                ],
            )
            .await?;
        Ok((token, expires_at))
    }

    /// Whom `token` was sent to, if it is unused, unexpired and for `purpose`; leaves it
    /// unused.
    pub async fn peek(&self, token: &str, purpose: Purpose) -> Result<Option<Holder>, DbError> {
        self.db
            .fetch_optional(
                "SELECT user_id, email FROM email_tokens WHERE token_hash = $1 AND purpose = $2 \
                 AND used_at IS NULL AND expires_at > $3",
                &[
                    &digest(token),
                    &purpose.as_str().to_owned(),
                    &crate::db::now(),
                ],
            )
            .await
    }

    /// Spends `token` inside `tx` if it is unused, unexpired and for `purpose`, answering
    /// whom it was sent to; of two concurrent uses, one gets `None`.
    pub async fn consume(
        &self,
        tx: &mut Tx,
        token: &str,
        purpose: Purpose,
    ) -> Result<Option<Holder>, DbError> {
        let now = crate::db::now();
        tx.fetch_optional(
            "UPDATE email_tokens SET used_at = $1 WHERE token_hash = $2 AND purpose = $3 \
             AND used_at IS NULL AND expires_at > $1 RETURNING user_id, email",
            &[&now, &digest(token), &purpose.as_str().to_owned()],
        )
        .await
    }

    /// Deletes the tokens that expired before `before`; returns how many.
    pub async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        self.db
            .execute("DELETE FROM email_tokens WHERE expires_at < $1", &[&before])
            .await
    }

    /// Spends every unused token of `purpose` of `user_id` (after one was used).
    pub async fn spend_all(
        &self,
        tx: &mut Tx,
        user_id: Uuid,
        purpose: Purpose,
    ) -> Result<(), DbError> {
        let now = crate::db::now();
        tx.execute(
            "UPDATE email_tokens SET used_at = $1 WHERE user_id = $2 AND purpose = $3 \
             AND used_at IS NULL",
            &[&now, &user_id, &purpose.as_str().to_owned()],
        )
        .await
        .map(drop)
    }
}
