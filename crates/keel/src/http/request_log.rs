//! The request span and the "request finished" line.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::extract::MatchedPath;
use http::{Request, Response};
use opentelemetry::trace::Status;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{metrics::recent::RecentTraffic, telemetry::otel};

use super::request_id;

/// The target of the request span and line: the documented one, which `RUST_LOG` filters
/// and log queries name, kept from when this module lived in `telemetry`.
const TARGET: &str = "keel::telemetry::request";

/// Logs one "request finished" line per request (method, route, request id, status,
/// latency), counts it in the [`RecentTraffic`] the admin console draws, and runs the
/// request inside a `request` span carrying the same fields, so
/// every line logged while handling it names the request. The span is also the trace's
/// HTTP server span, with the OpenTelemetry semantic conventions' attribute names, and
/// continues the trace of an incoming W3C `traceparent`.
///
/// Hand-written rather than tower-http's `TraceLayer`, which also wraps the response body
/// and enters the span again on each of its frames; here the span is entered only while
/// the service call and its future are polled, and the body goes out untouched.
#[derive(Debug, Clone, Default)]
pub struct RequestLogLayer(pub Arc<RecentTraffic>);

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog {
            inner,
            traffic: Arc::clone(&self.0),
        }
    }
}

/// The service of [`RequestLogLayer`].
#[derive(Debug, Clone)]
pub struct RequestLog<S> {
    inner: S,
    traffic: Arc<RecentTraffic>,
}

impl<S, B, RB> Service<Request<B>> for RequestLog<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let start = Instant::now();
        let span = request_span(&request);
        let inner = span.in_scope(|| self.inner.call(request));
        RequestLogFuture {
            inner,
            span,
            start,
            traffic: Arc::clone(&self.traffic),
        }
    }
}

fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let method = request.method().as_str();
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        "http.request.method" = method,
        "http.route" = route,
        request_id = request_id::of(request),
        "otel.kind" = tracing::field::Empty,
        "otel.name" = tracing::field::Empty,
    );
    if otel::enabled() {
        // What only a trace needs is set here, not in the span's fields, which every log
        // line of the request repeats.
        span.record("otel.kind", "server");
        span.record(
            "otel.name",
            format!("{method} {}", route.unwrap_or_default()).trim_end(),
        );
        span.set_attribute("url.path", request.uri().path().to_owned());
        span.set_attribute("url.scheme", "http");
        span.set_attribute(
            "network.protocol.version",
            protocol_version(request.version()),
        );
        if let Some(agent) = request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            span.set_attribute("user_agent.original", agent.to_owned());
        }
        otel::set_parent_from_headers(&span, request.headers());
    }
    span
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

pin_project! {
    /// The response future of [`RequestLog`].
    pub struct RequestLogFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        start: Instant,
        traffic: Arc<RecentTraffic>,
    }
}

impl<F, RB, E> Future for RequestLogFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let status = response.status();
            if otel::enabled() {
                this.span
                    .set_attribute("http.response.status_code", i64::from(status.as_u16()));
                if status.is_server_error() {
                    this.span.set_status(Status::error(""));
                }
            }
            let elapsed = this.start.elapsed();
            this.traffic.record(elapsed);
            tracing::info!(
                target: TARGET,
                status = status.as_u16(),
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request finished"
            );
        }
        Poll::Ready(result)
    }
}
