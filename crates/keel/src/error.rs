//! The application's error type and its one conversion into RFC 9457 problem details.
//!
//! Handlers and extractors return [`ApiError`]. Its `IntoResponse` implementation only
//! attaches a [`Problem`] to an empty response; the `problem` middleware
//! (`http::problem`) renders every error response, keel's own and the framework's, into
//! `application/problem+json` with the request id. Internal causes are logged here, inside
//! the request's span (which carries the request id), and never reach the client.

use std::panic::Location;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// `RateLimit-Policy` (the IETF RateLimit header fields draft): the limits that apply.
pub const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left of them.
pub const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// Where a failing input was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputLocation {
    /// The JSON request body.
    Body,
    /// A query-string parameter.
    Query,
    /// A path segment.
    Path,
    /// A request header.
    Header,
}

/// One failing input of a 422 answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// Which part of the request holds the input.
    #[schema(example = "body")]
    pub location: InputLocation,
    /// JSON pointer (RFC 6901) to the input within that part: `/email` in the body,
    /// `/limit` among the query parameters.
    #[schema(example = "/email")]
    pub pointer: String,
    /// Stable, machine-readable reason.
    #[schema(example = "invalid_email")]
    pub code: &'static str,
    /// Human-readable explanation.
    #[schema(example = "must be a valid e-mail address")]
    pub detail: String,
}

impl FieldError {
    /// A failing input in `location` at `pointer`.
    pub fn new(
        location: InputLocation,
        pointer: impl Into<String>,
        code: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            location,
            pointer: pointer.into(),
            code,
            detail: detail.into(),
        }
    }
}

/// An RFC 9457 problem document, before the request id is added.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct Problem {
    /// URI reference identifying the problem type (`about:blank` for plain HTTP errors).
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub kind: &'static str,
    /// Short summary of the problem type.
    #[schema(example = "Not Found")]
    pub title: &'static str,
    /// HTTP status code.
    #[schema(example = 404)]
    pub status: u16,
    /// Explanation of this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "no user with this id")]
    pub detail: Option<String>,
    /// The failing inputs of a validation problem.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The path of the request that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "/users/019a8f4e-6b1a-7c3e-9d2f-5a4b3c2d1e0f")]
    pub instance: Option<String>,
    /// The request id, also in the `x-request-id` header and in every log line of the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "019a8f4e-6b1a-7c3e-9d2f-5a4b3c2d1e0f")]
    pub request_id: Option<String>,
    /// The W3C trace id of the request, when traces are exported: the trace to open in the
    /// tracing backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "4bf92f3577b34da6a3ce929d0e0e4736")]
    pub trace_id: Option<String>,
}

impl Problem {
    /// A plain problem for an HTTP status (`type` is `about:blank`).
    pub fn from_status(status: StatusCode) -> Self {
        Self {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            instance: None,
            request_id: None,
            trace_id: None,
        }
    }

    fn typed(status: StatusCode, kind: &'static str, title: &'static str, detail: String) -> Self {
        Self {
            kind,
            title,
            status: status.as_u16(),
            detail: Some(detail),
            errors: Vec::new(),
            instance: None,
            request_id: None,
            trace_id: None,
        }
    }

    /// The HTTP status of this problem.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Every way a request can fail, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not well-formed JSON (400).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// Some inputs are invalid (422); lists every one.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// The body is not of a supported media type (415).
    #[error("unsupported media type")]
    UnsupportedMediaType(&'static str),
    /// No such resource (404).
    #[error("{0}")]
    NotFound(&'static str),
    /// The request conflicts with stored state (409).
    #[error("{detail}")]
    Conflict {
        /// Problem type URI.
        kind: &'static str,
        /// Problem title.
        title: &'static str,
        /// Explanation.
        detail: String,
    },
    /// A plain HTTP error with an explanation (413, 415, 405, ...).
    #[error("{detail}")]
    Http {
        /// The status to answer.
        status: StatusCode,
        /// Explanation.
        detail: String,
    },
    /// The server is saturated; the client should retry after a delay (503).
    #[error("{detail}")]
    Unavailable {
        /// Explanation.
        detail: String,
        /// Seconds to wait, sent as `Retry-After`.
        retry_after_secs: u64,
    },
    /// Missing or invalid credentials (401, with `WWW-Authenticate`).
    #[error("{detail}")]
    Unauthorized {
        /// Problem type URI.
        kind: &'static str,
        /// Explanation.
        detail: &'static str,
        /// The `WWW-Authenticate` challenge.
        challenge: &'static str,
    },
    /// Authenticated, but not allowed to do this (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Too many requests from this client or for this account (429, with `Retry-After`).
    #[error("{detail}")]
    TooManyRequests {
        /// Explanation.
        detail: &'static str,
        /// Seconds to wait, sent as `Retry-After`.
        retry_after_secs: u64,
        /// `RateLimit-Policy` and `RateLimit` of the limit that refused.
        limit: Option<Box<(http::HeaderValue, http::HeaderValue)>>,
    },
    /// An `If-Match` precondition failed (412).
    #[error("precondition failed")]
    PreconditionFailed,
    /// The same `Idempotency-Key` was sent with another request (422).
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    /// Anything else: logged with its cause, answered 500 without it.
    #[error("internal error at {location}: {source:#}")]
    Internal {
        /// The cause, for the log only.
        source: anyhow::Error,
        /// Where the error was raised.
        location: &'static Location<'static>,
    },
}

impl ApiError {
    /// Wraps an unexpected failure, recording where it was raised.
    #[track_caller]
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self::Internal {
            source: source.into(),
            location: Location::caller(),
        }
    }

    /// One invalid input.
    pub fn invalid(error: FieldError) -> Self {
        Self::Validation(vec![error])
    }

    /// The problem document the client receives.
    pub fn problem(&self) -> Problem {
        match self {
            Self::MalformedJson(detail) => Problem::typed(
                StatusCode::BAD_REQUEST,
                "/problems/malformed-json",
                "Malformed JSON",
                format!("the request body is not valid JSON: {detail}"),
            ),
            Self::Validation(errors) => Problem {
                errors: errors.clone(),
                ..Problem::typed(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "/problems/validation",
                    "Validation failed",
                    format!(
                        "{} input{} failed validation",
                        errors.len(),
                        if errors.len() == 1 { "" } else { "s" }
                    ),
                )
            },
            Self::UnsupportedMediaType(expected) => Problem {
                detail: Some(format!("the request body must be sent as {expected}")),
                ..Problem::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            },
            Self::Http { status, detail } => Problem {
                detail: Some(detail.clone()),
                ..Problem::from_status(*status)
            },
            Self::Unavailable { detail, .. } => Problem::typed(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/overloaded",
                "Overloaded",
                detail.clone(),
            ),
            Self::NotFound(detail) => Problem {
                detail: Some((*detail).to_owned()),
                ..Problem::from_status(StatusCode::NOT_FOUND)
            },
            Self::Conflict {
                kind,
                title,
                detail,
            } => Problem::typed(StatusCode::CONFLICT, kind, title, detail.clone()),
            Self::Unauthorized { kind, detail, .. } => Problem::typed(
                StatusCode::UNAUTHORIZED,
                kind,
                "Unauthorized",
                (*detail).to_owned(),
            ),
            Self::Forbidden(detail) => Problem::typed(
                StatusCode::FORBIDDEN,
                "/problems/forbidden",
                "Forbidden",
                (*detail).to_owned(),
            ),
            Self::TooManyRequests { detail, .. } => Problem::typed(
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/rate-limited",
                "Too many requests",
                (*detail).to_owned(),
            ),
            Self::PreconditionFailed => Problem::typed(
                StatusCode::PRECONDITION_FAILED,
                "/problems/precondition-failed",
                "Precondition failed",
                "the resource has changed since the ETag given in If-Match; fetch it again"
                    .to_owned(),
            ),
            Self::IdempotencyKeyReused => Problem::typed(
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/idempotency-key-reused",
                "Idempotency key reused",
                "this Idempotency-Key was already used with a different request".to_owned(),
            ),
            Self::Internal { .. } => Problem {
                detail: Some("the server failed to answer this request; quote the request id when reporting it".to_owned()),
                ..Problem::from_status(StatusCode::INTERNAL_SERVER_ERROR)
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal { source, location } = &self {
            tracing::error!(error = format!("{source:#}"), %location, "internal error");
        }
        let problem = self.problem();
        let mut response = problem.status_code().into_response();
        match &self {
            Self::Unavailable {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, (*retry_after_secs).into());
            }
            Self::TooManyRequests {
                retry_after_secs,
                limit,
                ..
            } => {
                let headers = response.headers_mut();
                headers.insert(http::header::RETRY_AFTER, (*retry_after_secs).into());
                if let Some(limit) = limit {
                    let (policy, state) = limit.as_ref();
                    headers.insert(RATELIMIT_POLICY, policy.clone());
                    headers.insert(RATELIMIT, state.clone());
                }
            }
            Self::Unauthorized { challenge, .. } => {
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static(challenge),
                );
            }
            _ => {}
        }
        response.extensions_mut().insert(problem);
        response
    }
}
