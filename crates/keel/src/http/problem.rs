//! The one place where error responses become `application/problem+json`.
//!
//! keel's own errors arrive as an empty response carrying a [`Problem`] extension
//! (see [`crate::error::ApiError`]); errors produced by the framework or by tower layers
//! (unknown route, wrong method, timeout, body limit) arrive as a bare status. Both leave
//! here as a problem document with the request id.

use axum::{
    body::Body,
    extract::Request,
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, header};

use crate::error::{PROBLEM_JSON, Problem};

use super::request_id;

/// Middleware: renders every 4xx/5xx response as a problem document.
pub async fn render(request: Request, next: Next) -> Response {
    let request_id = request_id::of(&request).to_owned();
    let instance = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if is_problem(&response) {
        return response;
    }
    let mut problem = response
        .extensions_mut()
        .remove::<Problem>()
        .unwrap_or_else(|| default_problem(status));
    problem.instance = Some(instance);
    problem.request_id = Some(request_id);
    let bytes = match serde_json::to_vec(&problem) {
        Ok(bytes) => bytes,
        Err(_) => return status.into_response(),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    Response::from_parts(parts, Body::from(bytes))
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
}

/// The problem for a status that the framework or a layer produced on its own.
fn default_problem(status: http::StatusCode) -> Problem {
    use http::StatusCode as S;
    let detail = match status {
        S::NOT_FOUND => "no route matches this path",
        S::METHOD_NOT_ALLOWED => "this method is not allowed on this path; see the Allow header",
        S::PAYLOAD_TOO_LARGE => "the request body is larger than the configured limit",
        S::REQUEST_TIMEOUT => "the request took longer than the configured timeout",
        S::UNSUPPORTED_MEDIA_TYPE => "the request body must be sent as application/json",
        _ => "",
    };
    Problem {
        detail: (!detail.is_empty()).then(|| detail.to_owned()),
        ..Problem::from_status(status)
    }
}
