//! Logging: `RUST_LOG` filters by module; `LOG_FORMAT=json` gives one JSON object a line.
//!
//! Lines are formatted on the thread that logs them and written to stdout by a background
//! thread, so a request never waits on the terminal, a pipe or a disk, and lines that pile
//! up while it writes go out together in one write. Colours are used only on a terminal.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Filter used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn";

/// Lines waiting for the writer thread at most.
const LOG_QUEUE_LINES: usize = 4096;

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
        .finish(std::io::stdout());
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
