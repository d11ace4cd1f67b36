//! Security headers on every response: helmet 8's defaults, plus `X-Frame-Options: DENY`
//! and a Content-Security-Policy that forbids everything for API responses. Pages that
//! need a different policy (the docs) set their own and it is kept.

use axum::response::Response;
use http::{HeaderName, HeaderValue, header};

/// The policy of every API response: nothing may be loaded or framed.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

const HEADERS: [(HeaderName, &str); 13] = [
    (header::CONTENT_SECURITY_POLICY, API_CSP),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    ),
    (HeaderName::from_static("origin-agent-cluster"), "?1"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includeSubDomains",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_DNS_PREFETCH_CONTROL, "off"),
    (HeaderName::from_static("x-download-options"), "noopen"),
    (
        HeaderName::from_static("x-permitted-cross-domain-policies"),
        "none",
    ),
    (header::X_XSS_PROTECTION, "0"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=()",
    ),
];

/// Adds the security headers a response does not already have.
pub async fn add(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in &HEADERS {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
    }
    response
}
