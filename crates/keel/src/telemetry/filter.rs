//! The log filter (`RUST_LOG` syntax), replaceable while the process runs.

use std::sync::OnceLock;

use tracing_subscriber::{EnvFilter, Registry, reload};

type Handle = reload::Handle<EnvFilter, Registry>;

/// The handle of the filter installed by [`super::init`].
static FILTER: OnceLock<Handle> = OnceLock::new();

/// The log lines' filter, starting as `initial`, which [`set`] replaces.
pub(super) fn layer(initial: EnvFilter) -> reload::Layer<EnvFilter, Registry> {
    let (layer, handle) = reload::Layer::new(initial);
    // A second `init` installs nothing; the first filter stays the one in force.
    let _ = FILTER.set(handle);
    layer
}

/// Parses `text` as a filter; the error says which directive is wrong.
pub fn parse(text: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(text)
        .map_err(|error| format!("not a valid filter: {error}"))
}

/// The filter in force; `None` when this process installed none.
pub fn current() -> Option<String> {
    FILTER.get()?.with_current(ToString::to_string).ok()
}

/// Replaces the filter with `text`.
pub fn set(text: &str) -> Result<(), String> {
    let filter = parse(text)?;
    FILTER
        .get()
        .ok_or("this process has no log filter")?
        .reload(filter)
        .map_err(|error| error.to_string())
}
