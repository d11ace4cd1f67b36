//! Security headers on every response: helmet 8's defaults, plus `X-Frame-Options: DENY`
//! and a Content-Security-Policy that forbids everything for API responses. Pages that
//! need a different policy (the docs) set their own and it is kept.

use http::{HeaderName, HeaderValue, Response, header};

/// The policy of every API response: nothing may be loaded or framed.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

const HEADERS: [(HeaderName, HeaderValue); 13] = [
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(API_CSP),
    ),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    ),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    ),
    (
        HeaderName::from_static("origin-agent-cluster"),
        HeaderValue::from_static("?1"),
    ),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    ),
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (
        header::X_DNS_PREFETCH_CONTROL,
        HeaderValue::from_static("off"),
    ),
    (
        HeaderName::from_static("x-download-options"),
        HeaderValue::from_static("noopen"),
    ),
    (
        HeaderName::from_static("x-permitted-cross-domain-policies"),
        HeaderValue::from_static("none"),
    ),
    (header::X_XSS_PROTECTION, HeaderValue::from_static("0")),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    ),
];

/// Adds the security headers a response does not already have.
///
/// A plain function rather than an axum middleware so that it runs inline on every
/// response (no boxed future, no clone of the inner service).
pub fn add<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    // One growth of the table up front instead of several while inserting.
    headers.reserve(HEADERS.len());
    for (name, value) in &HEADERS {
        // `entry` hashes and probes once where `contains_key` + `insert` did it twice.
        headers.entry(name).or_insert_with(|| value.clone());
    }
    response
}
