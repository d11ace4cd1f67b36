//! Logs and traces.
//!
//! Logging: `RUST_LOG` filters by module, and an admin can change the filter while the
//! process runs (the `log_filter` feature, through [`filter`]); `LOG_FORMAT=json` gives [one JSON object a line](json). Lines are formatted on the thread that logs them and written to stdout by a
//! background thread, so a request never waits on the terminal, a pipe or a disk, and lines
//! that pile up while it writes go out together in one write. Colours are used only on a
//! terminal.
//!
//! Traces: keel's spans (requests, queries, cache and broker calls, jobs) go to an
//! OpenTelemetry collector when the standard `OTEL_*` variables name one ([`otel`]); their
//! ids then appear in every log line and problem document.

pub mod filter;
mod json;
pub mod otel;

use std::io::{BufWriter, IsTerminal};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, Layer as _, filter::Targets, fmt, prelude::*};

use crate::config::LogFormat;

/// Filter used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn";

/// Lines waiting for the writer thread at most.
const LOG_QUEUE_LINES: usize = 4096;

/// Bytes of log lines gathered before a write to stdout.
const STDOUT_BUFFER: usize = 64 * 1024;

/// Flushes the lines still queued for stdout, and the spans not yet exported, when dropped;
/// keep it until the process ends.
#[must_use = "dropping the guard stops the log writer and the span exporter"]
pub struct LogGuard {
    tracer: Option<SdkTracerProvider>,
    _writer: Option<WorkerGuard>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            // Exports what is still queued; a collector that is gone only costs the timeout.
            if let Err(error) = tracer.shutdown() {
                eprintln!("keel: cannot export the last spans: {error}");
            }
        }
    }
}

/// Installs the global subscriber: the log lines and, when the environment asks for it,
/// the span exporter. Safe to call more than once (later calls do nothing).
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
    let lines = match format {
        LogFormat::Json => fmt::layer()
            .fmt_fields(json::JsonMembers)
            .event_format(json::JsonLines)
            .with_writer(writer)
            .with_filter(filter::layer(filter))
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .with_filter(filter::layer(filter))
            .boxed(),
    };
    let (tracer, spans) = match otel::provider_from_env() {
        Ok(Some(provider)) => {
            // keel's own spans at INFO, whatever RUST_LOG says about log lines; the
            // libraries' internal spans stay out of the trace.
            let spans = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("keel"))
                .with_location(false)
                .with_threads(false)
                .with_filter(Targets::new().with_target("keel", LevelFilter::INFO));
            (Some(provider), Some(spans))
        }
        Ok(None) => (None, None),
        Err(error) => {
            eprintln!("keel: {error}; spans are not exported");
            (None, None)
        }
    };
    let result = tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .try_init();
    LogGuard {
        tracer: result.is_ok().then_some(tracer).flatten(),
        _writer: result.is_ok().then_some(guard),
    }
}
