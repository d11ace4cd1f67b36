//! Extractors that validate input and report every failure as a [`FieldError`].
//!
//! A JSON body goes through three gates, each with its own status: the media type (415),
//! the syntax (400, a member name repeated in one object included), then the domain rules
//! of the target type (422, listing every failing field at once, including unknown and
//! missing ones).

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
};
use http::{StatusCode, header, request::Parts};
use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError, InputLocation};

/// Why one input is invalid: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Machine-readable reason.
    pub code: &'static str,
    /// Human-readable explanation.
    pub detail: String,
}

impl Invalid {
    /// An invalid input with `code` and `detail`.
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// A type built from a JSON document with every failure reported.
pub trait FromJson: Sized {
    /// Builds the value, or lists every failing field.
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>>;
}

/// A JSON request body validated into `T`.
#[derive(Debug)]
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: FromJson> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType("application/json"));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_error)?;
        let value = super::strict_json::parse(&bytes)
            .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        T::from_json(value)
            .map(ValidJson)
            .map_err(ApiError::Validation)
    }
}

fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::Http {
            status,
            detail: "the request body is larger than the configured limit".to_owned(),
        }
    } else {
        ApiError::Http {
            status: StatusCode::BAD_REQUEST,
            detail: "the request body could not be read".to_owned(),
        }
    }
}

/// `application/json` or any `application/*+json` (such as `merge-patch+json`).
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the fields of a JSON object one by one, collecting every failure.
pub struct ObjectReader {
    fields: Map<String, Value>,
    known: &'static [&'static str],
    errors: Vec<FieldError>,
}

impl ObjectReader {
    /// Starts reading `value`, which must be an object whose keys are all in `known`.
    pub fn new(value: Value, known: &'static [&'static str]) -> Result<Self, Vec<FieldError>> {
        match value {
            Value::Object(fields) => Ok(Self {
                fields,
                known,
                errors: Vec::new(),
            }),
            other => Err(vec![body_error_at(
                "",
                Invalid::new(
                    "type",
                    format!("must be a JSON object, not {}", kind_of(&other)),
                ),
            )]),
        }
    }

    /// A field that must be present and not null.
    pub fn required<T>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(Value) -> Result<T, Invalid>,
    ) -> Option<T> {
        match self.fields.remove(field) {
            None => {
                self.fail(field, Invalid::new("missing", "this field is required"));
                None
            }
            Some(value) => self.parse(field, value, parse),
        }
    }

    /// A field that may be absent, but not null.
    pub fn optional<T>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(Value) -> Result<T, Invalid>,
    ) -> Option<T> {
        let value = self.fields.remove(field)?;
        self.parse(field, value, parse)
    }

    fn parse<T>(
        &mut self,
        field: &'static str,
        value: Value,
        parse: impl FnOnce(Value) -> Result<T, Invalid>,
    ) -> Option<T> {
        if value.is_null() {
            self.fail(field, Invalid::new("null", "must not be null"));
            return None;
        }
        parse(value)
            .map_err(|invalid| self.fail(field, invalid))
            .ok()
    }

    /// Reports `field` as invalid for a reason that involves other fields.
    pub fn fail_field(&mut self, field: &str, invalid: Invalid) {
        self.fail(field, invalid);
    }

    fn fail(&mut self, field: &str, invalid: Invalid) {
        self.errors
            .push(body_error_at(&format!("/{}", escape(field)), invalid));
    }

    /// Ends reading: unknown fields are errors too. Returns every error found.
    pub fn finish(mut self) -> Result<(), Vec<FieldError>> {
        let known = self.known;
        let unknown: Vec<String> = self
            .fields
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            self.fail(
                &key,
                Invalid::new(
                    "unknown_field",
                    format!("unknown field; expected one of: {}", known.join(", ")),
                ),
            );
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// A JSON string, or the error every string field reports.
pub fn string(value: Value) -> Result<String, Invalid> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(Invalid::new(
            "type",
            format!("must be a string, not {}", kind_of(&other)),
        )),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn body_error_at(pointer: &str, invalid: Invalid) -> FieldError {
    FieldError::new(InputLocation::Body, pointer, invalid.code, invalid.detail)
}

/// Escapes a key for use as a JSON pointer token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The raw query string's pairs, decoded; keeps every repetition.
#[derive(Debug, Default)]
pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    /// The last value given for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The state filter `state`, read by `parse`; a value it does not know is reported in
    /// `errors` (`invalid_state`) with the `allowed` names.
    pub fn state_filter<T>(
        &self,
        parse: impl FnOnce(&str) -> Option<T>,
        allowed: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<T> {
        let raw = self.get("state")?;
        let parsed = parse(raw);
        if parsed.is_none() {
            errors.push(FieldError::new(
                InputLocation::Query,
                "/state",
                "invalid_state",
                format!("must be one of {allowed}"),
            ));
        }
        parsed
    }

    /// The free-text filter `name`, or `None` when absent or empty. A value over `max_chars`
    /// characters or holding control characters is reported in `errors`: stored text never
    /// holds them, and PostgreSQL rejects NUL outright, so such a filter is a client error
    /// rather than a database one.
    pub fn text_filter(
        &self,
        name: &str,
        max_chars: usize,
        errors: &mut Vec<FieldError>,
    ) -> Option<&str> {
        let value = self.get(name).filter(|v| !v.is_empty())?;
        let pointer = format!("/{name}");
        if value.chars().count() > max_chars {
            errors.push(FieldError::new(
                InputLocation::Query,
                pointer.clone(),
                "too_long",
                format!("must be at most {max_chars} characters"),
            ));
        }
        if value.chars().any(char::is_control) {
            errors.push(FieldError::new(
                InputLocation::Query,
                pointer,
                "control_character",
                "must not contain control characters",
            ));
        }
        Some(value)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(QueryPairs)
            .map_err(|_| {
                ApiError::invalid(FieldError::new(
                    InputLocation::Query,
                    "",
                    "malformed_query",
                    "the query string is not valid application/x-www-form-urlencoded",
                ))
            })
    }
}

/// A path parameter that must be a UUID; anything else is a 422 naming the parameter.
#[derive(Debug, Clone, Copy)]
pub struct UuidParam(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for UuidParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let [id] = uuid_params(parts, state).await?;
        Ok(Self(id))
    }
}

/// The two UUIDs of a path such as `/webhooks/{id}/deliveries/{delivery_id}`, each
/// reported by name when it is not one.
#[derive(Debug, Clone, Copy)]
pub struct UuidPair(pub uuid::Uuid, pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for UuidPair {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let [first, second] = uuid_params(parts, state).await?;
        Ok(Self(first, second))
    }
}

/// The route's `N` path parameters as UUIDs; every one that is not is reported.
async fn uuid_params<S: Send + Sync, const N: usize>(
    parts: &mut Parts,
    state: &S,
) -> Result<[uuid::Uuid; N], ApiError> {
    let invalid = |name: &str| {
        FieldError::new(
            InputLocation::Path,
            format!("/{name}"),
            "invalid_uuid",
            "must be a UUID such as 0190b6f4-8e1c-7c3a-9f3e-3b1e2a4c5d6f",
        )
    };
    let axum::extract::Path(params) =
        axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid(invalid("id")))?;
    let mut ids = [uuid::Uuid::nil(); N];
    let mut errors = Vec::new();
    for (slot, (name, value)) in ids.iter_mut().zip(&params) {
        match uuid::Uuid::try_parse(value) {
            Ok(id) => *slot = id,
            Err(_) => errors.push(invalid(name)),
        }
    }
    if params.len() != N {
        errors.push(invalid("id"));
    }
    if errors.is_empty() {
        Ok(ids)
    } else {
        Err(ApiError::Validation(errors))
    }
}
