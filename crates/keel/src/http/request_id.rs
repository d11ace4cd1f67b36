//! Request ids: kept from `x-request-id` when it looks sane, generated otherwise.

use axum::extract::Request;
use http::HeaderName;
use tower_http::request_id::{MakeRequestId, RequestId};

/// The header that carries the request id, both ways.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied request id that is kept.
const MAX_LEN: usize = 128;

/// Generates time-ordered UUIDv7 request ids.
#[derive(Clone, Copy, Default)]
pub struct MakeUuidV7;

impl MakeRequestId for MakeUuidV7 {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        // Formatted on the stack: the header value is the only allocation.
        let mut buf = [0; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        http::HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// Drops an incoming `x-request-id` that is empty, too long or has characters other than
/// letters, digits and `-_.:`, so that a fresh one is generated and nothing hostile reaches
/// the logs.
pub fn drop_insane(mut request: Request) -> Request {
    let sane = request.headers().get(&X_REQUEST_ID).is_none_or(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    if !sane {
        request.headers_mut().remove(&X_REQUEST_ID);
    }
    request
}

/// The request id of a request, as a string (empty when the layer did not run).
pub fn of<B>(request: &http::Request<B>) -> &str {
    request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
}
