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

use std::fmt::{self, Write as _};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    registry::LookupSpan,
};

use super::otel;

/// Formats events as [the documented JSON line](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonMembers> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonMembers>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        write!(
            writer,
            "{{\"timestamp\":\"{timestamp}\",\"level\":\"{}\",\"target\":",
            meta.level()
        )?;
        write_str(&mut writer, meta.target())?;
        // The event's fields, its message first: written straight into the line.
        event.record(&mut MemberWriter::after_first(&mut writer));
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(members) = span.extensions().get::<FormattedFields<JsonMembers>>()
                    && !members.is_empty()
                {
                    writer.write_char(',')?;
                    writer.write_str(members)?;
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

/// Formats a span's fields as JSON object members (`"a":1,"b":"x"`, no braces), kept with
/// the span and copied into each line written inside it.
///
/// Written straight into the text, unlike tracing-subscriber's `JsonFields`, which builds
/// a map of JSON values first: that cost a third of the throughput of the smallest request
/// with one line per request (see README, "Logs").
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonMembers;

impl<'writer> FormatFields<'writer> for JsonMembers {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut members = MemberWriter::first(&mut writer);
        fields.record(&mut members);
        members.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut members = MemberWriter {
            writer: &mut writer,
            first,
            result: Ok(()),
        };
        fields.record(&mut members);
        members.result
    }
}

/// Writes each field it visits as a `"name":value` member.
struct MemberWriter<'a, 'w> {
    writer: &'a mut Writer<'w>,
    /// Whether no member precedes the next one (no comma before it).
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> MemberWriter<'a, 'w> {
    fn first(writer: &'a mut Writer<'w>) -> Self {
        Self {
            writer,
            first: true,
            result: Ok(()),
        }
    }

    fn after_first(writer: &'a mut Writer<'w>) -> Self {
        Self {
            writer,
            first: false,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(',')?;
            }
            write_str(self.writer, field.name())?;
            self.writer.write_char(':')?;
            value(self.writer)
        })();
    }
}

impl Visit for MemberWriter<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| write_str(w, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |w| write_debug(w, &format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| write_debug(w, value));
    }
}

/// Writes `value` as a JSON string: quoted, with `"`, `\\` and control characters escaped.
fn write_str(writer: &mut Writer<'_>, value: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(writer).write_str(value)?;
    writer.write_char('"')
}

/// Writes a value's `Debug` text as a JSON string without building it first.
fn write_debug(writer: &mut Writer<'_>, value: &dyn fmt::Debug) -> fmt::Result {
    writer.write_char('"')?;
    write!(Escaped(writer), "{value:?}")?;
    writer.write_char('"')
}

/// Escapes what goes through it for the inside of a JSON string.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, value: &str) -> fmt::Result {
        // Every character that needs escaping is ASCII, so the text is scanned byte by byte
        // and cut only next to ASCII bytes, which are always character boundaries.
        let mut plain = 0;
        for (at, byte) in value.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                byte if byte < b' ' => "",
                _ => continue,
            };
            self.0.write_str(&value[plain..at])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&value[plain..])
    }
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
                .fmt_fields(JsonMembers)
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
    fn values_are_escaped_and_typed() {
        let lines = lines(|| {
            let error = std::io::Error::other("disk \"full\"");
            tracing::error!(
                text = "tab\there, bell\u{7}, quote \" and \\ é",
                debug = ?vec!["a\nb"],
                %error,
                big = u64::MAX,
                negative = -3_i64,
                ratio = 0.25,
                nan = f64::NAN,
                yes = true,
                "message with \"quotes\""
            );
        });
        let line = &lines[0].0;
        assert_eq!(line["message"], "message with \"quotes\"");
        assert_eq!(line["text"], "tab\there, bell\u{7}, quote \" and \\ é");
        assert_eq!(line["debug"], "[\"a\\nb\"]");
        assert_eq!(line["error"], "disk \"full\"");
        assert_eq!(line["big"], u64::MAX);
        assert_eq!(line["negative"], -3);
        assert_eq!(line["ratio"], 0.25);
        assert_eq!(line["nan"], Value::Null);
        assert_eq!(line["yes"], true);
    }

    #[test]
    fn fields_recorded_later_join_the_span() {
        let lines = lines(|| {
            let span = tracing::info_span!("request", first = 1, later = tracing::field::Empty);
            span.record("later", "x");
            span.in_scope(|| tracing::info!("inside"));
        });
        assert_eq!(lines[0].0["first"], 1);
        assert_eq!(lines[0].0["later"], "x");
    }

    #[test]
    fn a_line_outside_any_span_has_no_span_keys() {
        let lines = lines(|| tracing::warn!("plain"));
        assert_eq!(lines[0].1, ["timestamp", "level", "target", "message"]);
    }
}
