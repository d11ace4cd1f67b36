//! Storage of idempotency keys and the answers kept for them.

use std::time::Duration;

use chrono::Utc;

use crate::db::{Db, DbError, FromRow, Row};

/// A kept answer.
#[derive(Debug, Clone)]
pub struct Saved {
    /// HTTP status.
    pub status: u16,
    /// The kept headers, as (name, value).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// What a request with a key should do.
#[derive(Debug)]
pub enum Begin {
    /// This request holds the key now: run it.
    Started,
    /// The key's first request succeeded: answer this again.
    Replay(Saved),
    /// The key was used with another request.
    Mismatch,
    /// The key's first request is still running.
    InProgress,
}

struct Kept {
    request_hash: String,
    status: Option<i32>,
    headers: Option<String>,
    body: Option<Vec<u8>>,
    locked_until_ms: i64,
    expires_at_ms: i64,
}

impl FromRow for Kept {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok(Self {
            request_hash: row.get("request_hash")?,
            status: row.get("status")?,
            headers: row.get("headers")?,
            body: row.get("body")?,
            locked_until_ms: row.get("locked_until_ms")?,
            expires_at_ms: row.get("expires_at_ms")?,
        })
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Claims `key` for a request with `fingerprint`, or says what to answer instead.
pub async fn begin(
    db: &Db,
    key: &str,
    fingerprint: &str,
    lock: Duration,
    ttl: Duration,
) -> Result<Begin, DbError> {
    let key = key.to_owned();
    let fingerprint = fingerprint.to_owned();
    // Three rounds are enough: each lost race means another request changed the row, and
    // the next read sees what it did.
    for _ in 0..3 {
        let now = now_ms();
        let locked_until = now.saturating_add(millis(lock));
        let expires_at = now.saturating_add(millis(ttl));
        let inserted = db
            .execute(
                "INSERT INTO idempotency_keys (key, request_hash, locked_until_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
                &[&key, &fingerprint, &locked_until, &expires_at],
            )
            .await?;
        if inserted == 1 {
            return Ok(Begin::Started);
        }
        let row: Option<Kept> = db
            .fetch_optional(
                "SELECT request_hash, status, headers, body, locked_until_ms, expires_at_ms \
                 FROM idempotency_keys WHERE key = $1",
                &[&key],
            )
            .await?;
        let Some(row) = row else { continue };
        let expired = row.expires_at_ms <= now;
        let abandoned = row.status.is_none() && row.locked_until_ms <= now;
        if !expired {
            if row.request_hash != fingerprint {
                return Ok(Begin::Mismatch);
            }
            if let Some(status) = row.status {
                let headers = row
                    .headers
                    .as_deref()
                    .and_then(|h| serde_json::from_str(h).ok())
                    .unwrap_or_default();
                return Ok(Begin::Replay(Saved {
                    status: u16::try_from(status).unwrap_or(200),
                    headers,
                    body: row.body.unwrap_or_default(),
                }));
            }
            if !abandoned {
                return Ok(Begin::InProgress);
            }
        }
        // Expired, or its first request died: take it over unless someone else just did.
        let taken = db
            .execute(
                "UPDATE idempotency_keys SET request_hash = $2, status = NULL, headers = NULL, \
                 body = NULL, locked_until_ms = $3, expires_at_ms = $4 \
                 WHERE key = $1 AND locked_until_ms = $5 AND expires_at_ms = $6",
                &[
                    &key,
                    &fingerprint,
                    &locked_until,
                    &expires_at,
                    &row.locked_until_ms,
                    &row.expires_at_ms,
                ],
            )
            .await?;
        if taken == 1 {
            return Ok(Begin::Started);
        }
    }
    Ok(Begin::InProgress)
}

/// Keeps the answer of the request holding `key`.
pub async fn complete(db: &Db, key: &str, saved: &Saved) -> Result<(), DbError> {
    let headers = serde_json::to_string(&saved.headers).unwrap_or_else(|_| "[]".to_owned());
    db.execute(
        "UPDATE idempotency_keys SET status = $2, headers = $3, body = $4 WHERE key = $1",
        &[
            &key.to_owned(),
            &i32::from(saved.status),
            &headers,
            &saved.body,
        ],
    )
    .await
    .map(drop)
}

/// Forgets `key`, so that a retry runs again (after a failed answer).
pub async fn release(db: &Db, key: &str) -> Result<(), DbError> {
    db.execute(
        "DELETE FROM idempotency_keys WHERE key = $1 AND status IS NULL",
        &[&key.to_owned()],
    )
    .await
    .map(drop)
}

/// Deletes expired keys; returns how many.
pub async fn purge_expired(db: &Db) -> Result<u64, DbError> {
    let now = now_ms();
    db.execute(
        "DELETE FROM idempotency_keys WHERE expires_at_ms <= $1",
        &[&now],
    )
    .await
}
