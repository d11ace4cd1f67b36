//! OpenTelemetry traces, exported over OTLP (HTTP/protobuf) when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! The SDK reads the rest of the standard variables itself: `OTEL_SERVICE_NAME` (keel's
//! default is `keel`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` and
//! the batch processor's `OTEL_BSP_*`. `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn export off. Without an endpoint no tracer is installed
//! at all, and the helpers here return at their first check.
//!
//! Trace context crosses process boundaries as a W3C `traceparent`: read from incoming
//! requests, stored with each job (and sent with its RabbitMQ message), and sent with each
//! webhook delivery.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use http::HeaderMap;
use opentelemetry::{
    Context, KeyValue,
    propagation::TextMapPropagator,
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
const DEFAULT_SERVICE_NAME: &str = "keel";

/// The header (and job field) that carries a trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Whether a tracer is installed: lets every helper return at once when it is not.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported.
pub fn enabled() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Why tracing could not be set up as configured.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry: {0}")]
pub struct OtelError(String);

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// Whether the environment asks for trace export.
fn requested() -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    if env("OTEL_TRACES_EXPORTER").is_some_and(|v| !v.eq_ignore_ascii_case("otlp")) {
        return false;
    }
    env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

/// The tracer provider the environment asks for, or `None` when it asks for no export.
pub(super) fn provider_from_env() -> Result<Option<SdkTracerProvider>, OtelError> {
    if !requested() {
        return Ok(None);
    }
    let protocol =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(protocol) = protocol.filter(|p| p != "http/protobuf") {
        return Err(OtelError(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; keel exports over \
             http/protobuf (a collector's port 4318)"
        )));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|error| OtelError(error.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

/// The standard resource (environment variables, SDK attributes) with keel's service name
/// unless the environment names one.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

/// Makes `span` a child of the trace context in `headers`, if they carry a valid one.
pub fn set_parent_from_headers(span: &Span, headers: &HeaderMap) {
    if !enabled() || !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Only fails for a span that has already started, which this one has not.
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` a child of a stored `traceparent`, if it is valid.
pub fn set_parent_from_traceparent(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| enabled()) else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` of the current span, to store with work that continues the trace
/// elsewhere (a job); `None` when nothing is being traced.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&Span::current().context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Adds the current span's `traceparent` to an outgoing request's headers.
pub fn inject_headers(headers: &mut HeaderMap) {
    if enabled() {
        TraceContextPropagator::new()
            .inject_context(&Span::current().context(), &mut HeaderInjector(headers));
    }
}

/// The trace and span of the OpenTelemetry context active on this thread (the innermost
/// entered span), if it is being traced.
pub fn active_span() -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    Context::map_current(|cx| {
        let span = cx.span();
        let context = span.span_context();
        context.is_valid().then(|| context.clone())
    })
}

/// The trace id of the active span, as it appears in logs and problem documents.
pub fn active_trace_id() -> Option<String> {
    active_span().map(|context| context.trace_id().to_string())
}
