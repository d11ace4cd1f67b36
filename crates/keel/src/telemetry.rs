//! Logging: `RUST_LOG` filters by module; `LOG_FORMAT=json` gives one JSON object a line.
//!
//! Lines are formatted on the thread that logs them and written to stdout by a background
//! thread, so a request never waits on the terminal, a pipe or a disk, and lines that pile
//! up while it writes go out together in one write. Colours are used only on a terminal.

use std::{
    future::Future,
    io::{BufWriter, IsTerminal},
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::extract::MatchedPath;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{config::LogFormat, http::request_id};

/// Filter used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn";

/// Lines waiting for the writer thread at most.
const LOG_QUEUE_LINES: usize = 4096;

/// Bytes of log lines gathered before a write to stdout.
const STDOUT_BUFFER: usize = 64 * 1024;

/// Flushes the lines still queued for stdout when dropped; keep it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::stdout().is_terminal();
    // Not lossy: when the writer falls behind, logging waits rather than dropping lines.
    // The queue is allocated up front, so it is kept far below the crate's default of
    // 128,000 lines (4 MB of resident memory).
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("keel-log")
        // Buffered: the writer thread flushes after draining the queue, so the lines that
        // piled up go out in one write instead of one write per line.
        .finish(BufWriter::with_capacity(STDOUT_BUFFER, std::io::stdout()));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(writer))
            .try_init(),
    };
    LogGuard {
        _writer: result.is_ok().then_some(guard),
    }
}

/// Logs one "request finished" line per request (method, route, request id, status,
/// latency) and runs the request inside a `request` span carrying the same fields, so
/// every line logged while handling it names the request.
///
/// Hand-written rather than tower-http's `TraceLayer`, which also wraps the response body
/// and enters the span again on each of its frames; here the span is entered only while
/// the service call and its future are polled, and the body goes out untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLogLayer;

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog { inner }
    }
}

/// The service of [`RequestLogLayer`].
#[derive(Debug, Clone)]
pub struct RequestLog<S> {
    inner: S,
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
        RequestLogFuture { inner, span, start }
    }
}

fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("<unmatched>", MatchedPath::as_str);
    tracing::info_span!(
        "request",
        method = request.method().as_str(),
        route,
        request_id = request_id::of(request),
    )
}

pin_project! {
    /// The response future of [`RequestLog`].
    pub struct RequestLogFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        start: Instant,
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
            tracing::info!(
                status = response.status().as_u16(),
                latency_ms = this.start.elapsed().as_secs_f64() * 1000.0,
                "request finished"
            );
        }
        Poll::Ready(result)
    }
}
