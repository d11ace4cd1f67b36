//! The one place where error responses become `application/problem+json`.
//!
//! keel's own errors arrive as an empty response carrying a [`Problem`] extension
//! (see [`crate::error::ApiError`]); errors produced by the framework or by tower layers
//! (unknown route, wrong method, timeout, body limit) arrive as a bare status. Both leave
//! here as a problem document with the request id (and the trace id, when traces are
//! exported).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, Request, Uri, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::request_id::RequestId;

use crate::error::{PROBLEM_JSON, Problem};

/// Renders every 4xx/5xx response of the wrapped service as a problem document.
///
/// A hand-written layer rather than `axum::middleware::from_fn`: this runs on every
/// request, and `from_fn` boxes a future and clones the inner service each time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemLayer;

impl<S> Layer<S> for ProblemLayer {
    type Service = RenderProblems<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RenderProblems { inner }
    }
}

/// The service of [`ProblemLayer`].
#[derive(Debug, Clone)]
pub struct RenderProblems<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RenderProblems<S>
where
    S: Service<Request<B>, Response = http::Response<RB>>,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RenderFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Reference-counted handles, not copies: most responses never need them.
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.header_value().clone());
        let uri = request.uri().clone();
        RenderFuture {
            inner: self.inner.call(request),
            request_id,
            uri,
        }
    }
}

pin_project! {
    /// The response future of [`RenderProblems`].
    pub struct RenderFuture<F> {
        #[pin]
        inner: F,
        request_id: Option<HeaderValue>,
        uri: Uri,
    }
}

impl<F, RB, E> Future for RenderFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?.map(Body::new);
        let request_id = this
            .request_id
            .as_ref()
            .and_then(|id| id.to_str().ok())
            .unwrap_or_default();
        Poll::Ready(Ok(render(response, request_id, this.uri.path())))
    }
}

/// Turns an error response into a problem document quoting `request_id` and `instance`;
/// leaves other responses, finished problem documents and HTML pages as they are.
fn render(mut response: Response, request_id: &str, instance: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if is_finished(&response) {
        return response;
    }
    let mut problem = response
        .extensions_mut()
        .remove::<Problem>()
        .unwrap_or_else(|| default_problem(status));
    problem.instance = Some(instance.to_owned());
    problem.request_id = Some(request_id.to_owned());
    problem.trace_id = crate::telemetry::otel::active_trace_id();
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

/// A problem document already, or an HTML page (the admin console's error pages and
/// forms answered 4xx, which explain the problem to a person).
fn is_finished(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(PROBLEM_JSON.as_bytes())
                || v.as_bytes().starts_with(b"text/html")
        })
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
