//! The span of one statement, after OpenTelemetry's database client conventions; created
//! only while traces are exported, so that a query costs nothing more otherwise.

use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::otel;

/// A `query` span for `sql` on `system` (`sqlite` or `postgresql`), or a disabled span.
pub(super) fn query(system: &'static str, sql: &str) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    let (operation, collection) = summary(sql);
    let span = tracing::info_span!(
        "query",
        "otel.kind" = "client",
        "otel.name" = match collection {
            Some(collection) => format!("{operation} {collection}"),
            None => operation.to_owned(),
        },
        "db.system.name" = system,
        "db.operation.name" = operation,
        "db.collection.name" = collection,
    );
    // Parameterised text only: values travel as bind parameters and never reach the span.
    span.set_attribute("db.query.text", sql.to_owned());
    span
}

/// The statement's first keyword and the first table it names after `FROM`, `INTO` or
/// `UPDATE`: `("INSERT", Some("users"))`.
fn summary(sql: &str) -> (&str, Option<&str>) {
    let mut words = sql.split_whitespace();
    let operation = words.next().unwrap_or("QUERY");
    let mut previous = operation;
    for word in words {
        if ["FROM", "INTO", "UPDATE"]
            .iter()
            .any(|keyword| previous.eq_ignore_ascii_case(keyword))
        {
            let table = word.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
            if !table.is_empty() {
                return (operation, Some(table));
            }
        }
        previous = word;
    }
    let collection = operation
        .eq_ignore_ascii_case("UPDATE")
        .then(|| sql.split_whitespace().nth(1))
        .flatten();
    (operation, collection)
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn a_statement_is_summarised_by_its_operation_and_first_table() {
        assert_eq!(
            summary("INSERT INTO users (id, email) VALUES ($1, $2)"),
            ("INSERT", Some("users"))
        );
        assert_eq!(
            summary("SELECT id FROM jobs WHERE state = 'queued'"),
            ("SELECT", Some("jobs"))
        );
        assert_eq!(
            summary("UPDATE webhooks SET active = $1"),
            ("UPDATE", Some("webhooks"))
        );
        assert_eq!(
            summary("DELETE FROM \"events\" WHERE id < $1"),
            ("DELETE", Some("events"))
        );
        assert_eq!(summary("SELECT 1"), ("SELECT", None));
        assert_eq!(summary(""), ("QUERY", None));
    }
}
