//! Sessions: refresh tokens, stored only as SHA-256 hashes, grouped in families.
//!
//! A login starts a family. Refreshing spends the presented token and adds the next one to
//! the same family; a spent token presented again means two parties hold the family, so
//! the whole family is revoked (refresh-token reuse detection, RFC 9700 §4.14.2).

use std::{collections::HashSet, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::{Db, DbError, FromRow, Row, now};

/// A refresh token as stored.
#[derive(Debug, Clone)]
pub struct Session {
    /// This token's row.
    pub id: Uuid,
    /// The login it belongs to.
    pub family_id: Uuid,
    /// The account.
    pub user_id: Uuid,
    /// When the token stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was exchanged for the next one.
    pub used_at: Option<DateTime<Utc>>,
    /// When its family was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl FromRow for Session {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok(Self {
            id: row.get("id")?,
            family_id: row.get("family_id")?,
            user_id: row.get("user_id")?,
            expires_at: row.get("expires_at")?,
            used_at: row.get("used_at")?,
            revoked_at: row.get("revoked_at")?,
        })
    }
}

/// What presenting a refresh token leads to.
#[derive(Debug)]
pub enum Refresh {
    /// The token was current: here is the next one, in the same family.
    Rotated {
        /// The spent token's row.
        session: Session,
        /// The next refresh token.
        token: String,
    },
    /// The token had been spent already: its family is now revoked.
    Reused {
        /// The spent token's row.
        session: Session,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

/// Sessions' storage.
#[derive(Debug, Clone)]
pub struct SessionStore {
    db: Db,
    ttl: Duration,
}

/// The stored form of a refresh token.
pub(crate) fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 256 random bits, base64url.
pub(crate) fn new_token() -> Result<String, DbError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| DbError::Encode(Box::new(e)))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

impl SessionStore {
    /// Sessions on `db` whose refresh tokens live `ttl`.
    pub fn new(db: Db, ttl: Duration) -> Self {
        Self { db, ttl }
    }

    fn expiry(&self, from: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.ttl)
            .ok()
            .and_then(|ttl| from.checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Adds a token to `family` for `user`; returns the token.
    async fn add(&self, family: Uuid, user: Uuid) -> Result<String, DbError> {
        let token = new_token()?;
        let now = now();
        self.db
            .execute(
                "INSERT INTO sessions (id, family_id, user_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &Uuid::now_v7(),
                    &family,
                    &user,
                    &digest(&token),
                    &now,
                    &self.expiry(now),
                ],
            )
            .await?;
        Ok(token)
    }

    /// Starts a session for `user`: returns its id (the family) and its first refresh token.
    pub async fn start(&self, user: Uuid) -> Result<(Uuid, String), DbError> {
        let family = Uuid::now_v7();
        let token = self.add(family, user).await?;
        Ok((family, token))
    }

    /// Spends `token` for the next one of its family, or detects its reuse.
    pub async fn refresh(&self, token: &str) -> Result<Refresh, DbError> {
        let found: Option<Session> = self
            .db
            .fetch_optional(
                "SELECT id, family_id, user_id, expires_at, used_at, revoked_at \
                 FROM sessions WHERE token_hash = $1",
                &[&digest(token)],
            )
            .await?;
        let Some(session) = found else {
            return Ok(Refresh::Invalid);
        };
        let now = now();
        if session.revoked_at.is_some() || session.expires_at <= now {
            return Ok(Refresh::Invalid);
        }
        if session.used_at.is_some() {
            self.revoke_family(session.family_id).await?;
            return Ok(Refresh::Reused { session });
        }
        // Only one of two concurrent presentations spends the token; the other is a reuse.
        let spent = self
            .db
            .execute(
                "UPDATE sessions SET used_at = $1 \
                 WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL",
                &[&now, &session.id],
            )
            .await?;
        if spent == 0 {
            self.revoke_family(session.family_id).await?;
            return Ok(Refresh::Reused { session });
        }
        let token = self.add(session.family_id, session.user_id).await?;
        Ok(Refresh::Rotated { session, token })
    }

    /// Revokes every token of `family`.
    pub async fn revoke_family(&self, family: Uuid) -> Result<(), DbError> {
        self.db
            .execute(
                "UPDATE sessions SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
                &[&now(), &family],
            )
            .await?;
        Ok(())
    }

    /// Revokes every session of `user` but `keep`; returns the revoked families.
    pub async fn revoke_user(&self, user: Uuid, keep: Option<Uuid>) -> Result<Vec<Uuid>, DbError> {
        let keep = keep.unwrap_or(Uuid::nil());
        let families: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "UPDATE sessions SET revoked_at = $1 \
                 WHERE user_id = $2 AND family_id <> $3 AND revoked_at IS NULL \
                 RETURNING family_id",
                &[&now(), &user, &keep],
            )
            .await?;
        let unique: HashSet<Uuid> = families.into_iter().map(|(family,)| family).collect();
        Ok(unique.into_iter().collect())
    }

    /// Families revoked since `since` (their access tokens may still be unexpired).
    pub async fn revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<Uuid>, DbError> {
        let families: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "SELECT DISTINCT family_id FROM sessions WHERE revoked_at > $1",
                &[&since],
            )
            .await?;
        Ok(families.into_iter().map(|(family,)| family).collect())
    }

    /// Deletes tokens that expired before `before`; returns how many.
    pub async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        self.db
            .execute("DELETE FROM sessions WHERE expires_at < $1", &[&before])
            .await
    }
}
