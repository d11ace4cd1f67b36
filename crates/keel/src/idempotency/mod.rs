//! `Idempotency-Key` for `POST` requests (IETF draft `httpapi-idempotency-key-header`).
//!
//! The first request with a key runs and, when it succeeds (2xx/3xx), its answer is kept for
//! the configured time; a retry with the same key and the same request gets that answer
//! again (with `Idempotent-Replayed: true`), the same key with another request gets 422, and
//! a retry while the first is still running gets 409. Failed answers are not kept, so the
//! client may retry them. A first request whose instance died is taken over once its lock
//! (the request timeout) has run out.
//!
//! Keys are scoped to the caller (the user of a valid access token, or "anonymous"), so one
//! account's key never replays another's answer. Answers marked `Cache-Control: no-store`
//! (token pairs) are never kept: a retry runs again.

mod store;

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::{
    auth::{Auth, bearer_token},
    config::Config,
    db::Db,
    error::{ApiError, FieldError, InputLocation},
};

pub use store::purge_expired;

use store::{Begin, Saved};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer that was replayed from a previous request.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Response headers kept with a saved answer.
const KEPT_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::ETAG,
    header::LINK,
];

/// What the middleware keeps and reads.
#[derive(Clone)]
pub struct Idempotency {
    db: Db,
    auth: Arc<Auth>,
    body_limit: usize,
    ttl: Duration,
    lock: Duration,
}

impl Idempotency {
    /// Keys stored in `db`, scoped by the tokens `auth` verifies, with the limits of
    /// `config`.
    pub fn new(db: Db, auth: Arc<Auth>, config: &Config) -> Self {
        Self {
            db,
            auth,
            body_limit: config.body_limit,
            ttl: config.idempotency_ttl(),
            // A first request whose instance died is taken over after this.
            lock: config.request_timeout() * 2,
        }
    }
}

/// Middleware: applies idempotency to `POST` requests that carry the header.
pub async fn middleware(
    State(state): State<Idempotency>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(&IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let Some(key) = valid_key(key) else {
        return ApiError::invalid(FieldError::new(
            InputLocation::Header,
            "/Idempotency-Key",
            "invalid_idempotency_key",
            "must be 1 to 255 visible ASCII characters",
        ))
        .into_response();
    };
    match run(&state, key, request, next).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn valid_key(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let ok = (1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}

async fn run(
    state: &Idempotency,
    key: String,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, state.body_limit)
        .await
        .map_err(|_| ApiError::Http {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: "the request body is larger than the configured limit".to_owned(),
        })?;
    let fingerprint = fingerprint(&parts, &bytes);
    let key = format!("{}{key}", scope(state, &parts));
    match store::begin(&state.db, &key, &fingerprint, state.lock, state.ttl).await? {
        Begin::Replay(saved) => return Ok(replay(saved)),
        Begin::Mismatch => return Err(ApiError::IdempotencyKeyReused),
        Begin::InProgress => {
            return Err(ApiError::Conflict {
                kind: "/problems/idempotency-key-in-use",
                title: "Idempotency key in use",
                detail: "a request with this Idempotency-Key is still being processed; retry later"
                    .to_owned(),
            });
        }
        Begin::Started => {}
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() || is_no_store(&response) {
        store::release(&state.db, &key).await?;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("cannot buffer response: {e}")))?;
    let headers: Vec<(String, String)> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    store::complete(
        &state.db,
        &key,
        &Saved {
            status: status.as_u16(),
            headers,
            body: body.to_vec(),
        },
    )
    .await?;
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// Whose key it is: `user:<id>:` for a valid access token, `anon:` otherwise.
fn scope(state: &Idempotency, parts: &http::request::Parts) -> String {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(bearer_token)
        .and_then(|token| state.auth.tokens.verify(token).ok())
        .map_or_else(
            || "anon:".to_owned(),
            |principal| format!("user:{}:", principal.user_id),
        )
}

/// Whether the answer must not be stored (RFC 9111 §5.2.2.5): token pairs, for one.
fn is_no_store(response: &Response) -> bool {
    response
        .headers()
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-store"))
}

/// What identifies "the same request": method, path and query, media type and body.
fn fingerprint(parts: &http::request::Parts, body: &Bytes) -> String {
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update([0]);
    hasher.update(parts.uri.path_and_query().map_or("", |p| p.as_str()));
    hasher.update([0]);
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        hasher.update(content_type.as_bytes());
    }
    hasher.update([0]);
    hasher.update(body);
    hex::encode(hasher.finalize())
}

fn replay(saved: Saved) -> Response {
    let status = StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK);
    let mut response = (status, Body::from(saved.body)).into_response();
    let headers = response.headers_mut();
    for (name, value) in saved.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}
