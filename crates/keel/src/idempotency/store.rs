//! Storage of idempotency keys and the answers kept for them.

use std::time::Duration;

use chrono::Utc;

use crate::{db::Db, with_pool};

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

#[derive(sqlx::FromRow)]
struct Row {
    request_hash: String,
    status: Option<i32>,
    headers: Option<String>,
    body: Option<Vec<u8>>,
    locked_until_ms: i64,
    expires_at_ms: i64,
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
) -> Result<Begin, sqlx::Error> {
    // Three rounds are enough: each lost race means another request changed the row, and
    // the next read sees what it did.
    for _ in 0..3 {
        let now = now_ms();
        let locked_until = now.saturating_add(millis(lock));
        let expires_at = now.saturating_add(millis(ttl));
        let inserted = with_pool!(db, pool => sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, locked_until_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(locked_until)
        .bind(expires_at)
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 1 {
            return Ok(Begin::Started);
        }
        let row: Option<Row> = with_pool!(db, pool => sqlx::query_as(
            "SELECT request_hash, status, headers, body, locked_until_ms, expires_at_ms \
             FROM idempotency_keys WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(pool)
        .await?);
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
        let taken = with_pool!(db, pool => sqlx::query(
            "UPDATE idempotency_keys SET request_hash = $2, status = NULL, headers = NULL, \
             body = NULL, locked_until_ms = $3, expires_at_ms = $4 \
             WHERE key = $1 AND locked_until_ms = $5 AND expires_at_ms = $6",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(locked_until)
        .bind(expires_at)
        .bind(row.locked_until_ms)
        .bind(row.expires_at_ms)
        .execute(pool)
        .await?
        .rows_affected());
        if taken == 1 {
            return Ok(Begin::Started);
        }
    }
    Ok(Begin::InProgress)
}

/// Keeps the answer of the request holding `key`.
pub async fn complete(db: &Db, key: &str, saved: &Saved) -> Result<(), sqlx::Error> {
    let headers = serde_json::to_string(&saved.headers).unwrap_or_else(|_| "[]".to_owned());
    with_pool!(db, pool => sqlx::query(
        "UPDATE idempotency_keys SET status = $2, headers = $3, body = $4 WHERE key = $1",
    )
    .bind(key)
    .bind(i32::from(saved.status))
    .bind(headers)
    .bind(&saved.body)
    .execute(pool)
    .await
    .map(drop))?;
    Ok(())
}

/// Forgets `key`, so that a retry runs again (after a failed answer).
pub async fn release(db: &Db, key: &str) -> Result<(), sqlx::Error> {
    with_pool!(db, pool => sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND status IS NULL")
        .bind(key)
        .execute(pool)
        .await
        .map(drop))?;
    Ok(())
}

/// Deletes expired keys; returns how many.
pub async fn purge_expired(db: &Db) -> Result<u64, sqlx::Error> {
    let now = now_ms();
    Ok(
        with_pool!(db, pool => sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_ms <= $1")
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()),
    )
}
