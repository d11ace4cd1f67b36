//! The JSON log line: one object per line, the same keys for every line.
//!
//! ```json
//! {"timestamp":"2026-12-03T14:05:09.123456Z","level":"INFO","target":"keel::telemetry::request",
//!  "message":"request finished","status":201,"latency_ms":3.1,
//!  "http.request.method":"POST","http.route":"/auth/register","request_id":"0193…",
//!  "span":"request","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}
//! ```
//!
//! In order: `timestamp` (RFC 3339, UTC, microseconds), `level`, `target` (the module),
//! `message`, the event's own fields, the fields of every span the event is in (outermost
//! first: the request's method, route and `request_id`; a job's id, kind and attempt), then
//! `span` (the innermost span's name) and, when traces are exported, `trace_id` and
//! `span_id` of the innermost span. Keys that have no value are left out.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{JsonFields, Writer},
    },
    registry::LookupSpan,
};

use super::otel;

/// Formats events as [the documented JSON line](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            "{{\"timestamp\":\"{}\",\"level\":\"{}\",\"target\":",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            meta.level()
        )?;
        write_str(&mut writer, meta.target())?;
        // The event's fields (its message first), as the JSON field formatter writes them.
        let mut fields = String::with_capacity(128);
        ctx.format_fields(Writer::new(&mut fields), event)?;
        append_members(&mut writer, &fields)?;
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<JsonFields>>() {
                    append_members(&mut writer, fields)?;
                }
                innermost = Some(span.name());
            }
        }
        if let Some(name) = innermost {
            writer.write_str(",\"span\":")?;
            write_str(&mut writer, name)?;
        }
        if let Some(context) = otel::active_span() {
            write!(
                writer,
                ",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                context.trace_id(),
                context.span_id()
            )?;
        }
        writer.write_str("}\n")
    }
}

/// Appends the members of the JSON object `object` (`{"a":1,"b":2}`) after a comma.
fn append_members(writer: &mut Writer<'_>, object: &str) -> fmt::Result {
    let members = object
        .trim()
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_default();
    if members.is_empty() {
        return Ok(());
    }
    writer.write_char(',')?;
    writer.write_str(members)
}

/// Writes `value` as a JSON string.
fn write_str(writer: &mut Writer<'_>, value: &str) -> fmt::Result {
    let quoted = serde_json::to_string(value).map_err(|_| fmt::Error)?;
    writer.write_str(&quoted)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::{fmt::MakeWriter, prelude::*};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// Each line, parsed, with its keys in the order they were written.
    fn lines(log: impl FnOnce()) -> Vec<(Value, Vec<String>)> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .with_writer(buffer.clone()),
        );
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                let value: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                let mut keys: Vec<(usize, String)> = value
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|key| (line.find(&format!("\"{key}\":")).unwrap(), key.clone()))
                    .collect();
                keys.sort();
                (value, keys.into_iter().map(|(_, key)| key).collect())
            })
            .collect()
    }

    #[test]
    fn a_line_has_the_documented_keys_and_the_fields_of_its_spans() {
        let lines = lines(|| {
            let span = tracing::info_span!("request", request_id = "abc", route = "/users/{id}");
            let _entered = span.enter();
            let inner = tracing::info_span!("job", kind = "email.welcome");
            inner.in_scope(|| tracing::info!(status = 201, quote = "a \"b\"", "request finished"));
        });
        let (line, keys) = &lines[0];
        // The fixed keys first, then the event's fields (in the field formatter's order),
        // the spans' fields outermost first, and the span's name.
        assert_eq!(keys[..4], ["timestamp", "level", "target", "message"]);
        let mut event_fields = keys[4..6].to_vec();
        event_fields.sort();
        assert_eq!(event_fields, ["quote", "status"]);
        assert_eq!(keys[6..], ["request_id", "route", "kind", "span"]);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "request finished");
        assert_eq!(line["quote"], "a \"b\"");
        assert_eq!(line["status"], 201);
        assert_eq!(line["request_id"], "abc");
        assert_eq!(line["span"], "job");
        assert_eq!(line["target"], module_path!());
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "{timestamp}"
        );
    }

    #[test]
    fn a_line_outside_any_span_has_no_span_keys() {
        let lines = lines(|| tracing::warn!("plain"));
        assert_eq!(lines[0].1, ["timestamp", "level", "target", "message"]);
    }
}
