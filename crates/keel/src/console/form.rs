//! Forms and the API's answers to them: a problem's failing inputs shown next to the
//! fields they concern.

use std::collections::BTreeMap;

use http::StatusCode;

use crate::error::{InputLocation, Problem};

use super::api::Reply;

/// Messages by form field name.
#[derive(Debug, Clone, Default)]
pub struct FieldErrors(BTreeMap<String, String>);

impl FieldErrors {
    /// The body inputs `problem` names, by field (`/email` is the `email` field; a pointer
    /// into an array, `/event_types/2`, is its field).
    pub fn from_problem(problem: &Problem) -> Self {
        let mut fields = BTreeMap::new();
        for error in &problem.errors {
            if !matches!(error.location, InputLocation::Body | InputLocation::Query) {
                continue;
            }
            let field = error
                .pointer
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default();
            if field.is_empty() {
                continue;
            }
            fields
                .entry(field.to_owned())
                .and_modify(|message: &mut String| {
                    message.push_str("; ");
                    message.push_str(&error.detail);
                })
                .or_insert_with(|| error.detail.clone());
        }
        Self(fields)
    }

    /// The failing inputs of `problem`, or its summary as `field`'s when it names none.
    pub fn blaming(problem: &Problem, field: &str) -> Self {
        let mut errors = Self::from_problem(problem);
        if errors.is_empty() {
            errors.insert(field, summary(problem));
        }
        errors
    }

    /// The message for `field`.
    pub fn get(&self, field: &str) -> Option<&String> {
        self.0.get(field)
    }

    /// Adds a message for `field`.
    pub fn insert(&mut self, field: &str, message: impl Into<String>) {
        self.0.insert(field.to_owned(), message.into());
    }

    /// Whether no field failed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A list's answer, or the field errors of a 422 to its query (the summary as `field`'s when
/// the problem names no input) with that status.
pub fn listed(reply: Reply, field: &str) -> Result<Reply, (StatusCode, FieldErrors)> {
    if reply.status == StatusCode::UNPROCESSABLE_ENTITY {
        let status = reply.status;
        Err((status, FieldErrors::blaming(&reply.into_problem(), field)))
    } else {
        Ok(reply)
    }
}

/// The text to show for a problem that no field explains.
pub fn summary(problem: &Problem) -> String {
    match &problem.detail {
        Some(detail) if !detail.is_empty() => detail.clone(),
        _ => problem.title.to_owned(),
    }
}

/// The options of a `<select>`: each value, and whether it is `current`.
pub fn choices(
    values: impl IntoIterator<Item = &'static str>,
    current: &str,
) -> Vec<(&'static str, bool)> {
    values.into_iter().map(|v| (v, v == current)).collect()
}

/// `key=value&...` of the non-empty `pairs`, URL-encoded, with a leading `?` (or nothing).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        serializer.append_pair(key, value);
    }
    let encoded = serializer.finish();
    if encoded.is_empty() {
        encoded
    } else {
        format!("?{encoded}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldError;

    #[test]
    fn body_inputs_map_to_their_fields() {
        let mut problem = Problem::from_status(StatusCode::UNPROCESSABLE_ENTITY);
        problem.errors = vec![
            FieldError::new(
                InputLocation::Body,
                "/email",
                "invalid_email",
                "bad address",
            ),
            FieldError::new(InputLocation::Body, "/event_types/1", "invalid", "bad type"),
            FieldError::new(InputLocation::Body, "/event_types/2", "invalid", "worse"),
            FieldError::new(InputLocation::Header, "/if-match", "invalid", "ignored"),
        ];
        let errors = FieldErrors::from_problem(&problem);
        assert_eq!(errors.get("email").map(String::as_str), Some("bad address"));
        assert_eq!(
            errors.get("event_types").map(String::as_str),
            Some("bad type; worse")
        );
        assert!(errors.get("if-match").is_none());
    }

    #[test]
    fn queries_leave_out_empty_values_and_encode_the_rest() {
        assert_eq!(query(&[("q", ""), ("state", "")]), "");
        assert_eq!(query(&[("q", "a b&c"), ("x", "")]), "?q=a+b%26c");
    }
}
