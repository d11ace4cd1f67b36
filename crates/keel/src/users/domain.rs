//! Users' domain types. An [`Email`] or a [`UserName`] can only exist valid, so storage and
//! handlers never check them again.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use validator::ValidateEmail;

use crate::{
    error::FieldError,
    http::extract::{FromJson, Invalid, ObjectReader, string},
};

/// Longest e-mail address accepted (RFC 5321's path limit less the angle brackets).
pub const EMAIL_MAX_CHARS: usize = 254;
/// Shortest name accepted, in characters after trimming.
pub const NAME_MIN_CHARS: usize = 2;
/// Longest name accepted, in characters after trimming.
pub const NAME_MAX_CHARS: usize = 100;

/// A syntactically valid e-mail address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Validates an address.
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        if raw.chars().count() > EMAIL_MAX_CHARS {
            return Err(Invalid::new(
                "too_long",
                format!("must be at most {EMAIL_MAX_CHARS} characters"),
            ));
        }
        if !raw.validate_email() {
            return Err(Invalid::new(
                "invalid_email",
                "must be a valid e-mail address such as ada@example.com",
            ));
        }
        Ok(Self(raw))
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: trimmed, 2–100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    /// Validates a name.
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        let trimmed = raw.trim();
        if trimmed.chars().any(char::is_control) {
            return Err(Invalid::new(
                "control_character",
                "must not contain control characters",
            ));
        }
        let chars = trimmed.chars().count();
        if chars < NAME_MIN_CHARS {
            return Err(Invalid::new(
                "too_short",
                format!("must be at least {NAME_MIN_CHARS} characters after trimming"),
            ));
        }
        if chars > NAME_MAX_CHARS {
            return Err(Invalid::new(
                "too_long",
                format!("must be at most {NAME_MAX_CHARS} characters after trimming"),
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The trimmed name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored user.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "019a8f4e-6b1a-7c3e-9d2f-5a4b3c2d1e0f",
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "created_at": "2026-11-22T09:30:00.123456Z",
    "updated_at": "2026-11-22T09:30:00.123456Z"
}))]
pub struct User {
    /// Time-ordered UUIDv7.
    pub id: Uuid,
    /// E-mail address, unique regardless of case.
    #[schema(format = "email")]
    pub email: String,
    /// Display name.
    pub name: String,
    /// Creation time, RFC 3339 UTC.
    pub created_at: DateTime<Utc>,
    /// Time of the last change, RFC 3339 UTC.
    pub updated_at: DateTime<Utc>,
    /// Revision counter behind the `ETag`; not part of the representation.
    #[serde(skip)]
    #[schema(ignore)]
    pub version: i64,
}

/// A validated `POST /users` body.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The address.
    pub email: Email,
    /// The name.
    pub name: UserName,
}

/// A validated `PATCH /users/{id}` body: absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    /// New address.
    pub email: Option<Email>,
    /// New name.
    pub name: Option<UserName>,
}

impl UserChanges {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.name.is_none()
    }
}

const FIELDS: &[&str] = &["email", "name"];

fn email(value: Value) -> Result<Email, Invalid> {
    string(value).and_then(Email::parse)
}

fn name(value: Value) -> Result<UserName, Invalid> {
    string(value).and_then(UserName::parse)
}

impl FromJson for NewUser {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, FIELDS)?;
        let email = reader.required("email", email);
        let name = reader.required("name", name);
        reader.finish()?;
        match (email, name) {
            (Some(email), Some(name)) => Ok(Self { email, name }),
            // finish() has reported why one is missing.
            _ => Err(Vec::new()),
        }
    }
}

impl FromJson for UserChanges {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, FIELDS)?;
        let email = reader.optional("email", email);
        let name = reader.optional("name", name);
        reader.finish()?;
        Ok(Self { email, name })
    }
}

/// `POST /users` body, as documented.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com", "name": "Ada Lovelace"}))]
#[allow(dead_code)] // Documents the body (serde's attributes shape the schema); requests are parsed by `FromJson`.
pub struct CreateUserRequest {
    /// A valid e-mail address, at most 254 characters; unique regardless of case.
    #[schema(format = "email", max_length = 254)]
    email: String,
    /// Display name: trimmed, then 2–100 characters without control characters.
    #[schema(
        min_length = 2,
        pattern = r"^\s*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]{0,98}[^\s\x00-\x1F\x7F-\x9F]\s*$"
    )]
    name: String,
}

/// `PATCH /users/{id}` body, as documented: every field optional.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Ada King"}))]
#[allow(dead_code)] // Documents the body (serde's attributes shape the schema); requests are parsed by `FromJson`.
pub struct UpdateUserRequest {
    /// A valid e-mail address, at most 254 characters; unique regardless of case.
    #[schema(format = "email", max_length = 254, nullable = false)]
    email: Option<String>,
    /// Display name: trimmed, then 2–100 characters without control characters.
    #[schema(
        min_length = 2,
        nullable = false,
        pattern = r"^\s*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]{0,98}[^\s\x00-\x1F\x7F-\x9F]\s*$"
    )]
    name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_checked() {
        assert_eq!(
            Email::parse("ada@example.com".into()).map(|e| e.0),
            Ok("ada@example.com".to_owned())
        );
        assert_eq!(
            Email::parse(" ada@example.com".into()).map_err(|e| e.code),
            Err("invalid_email")
        );
        assert_eq!(
            Email::parse("not-an-email".into()).map_err(|e| e.code),
            Err("invalid_email")
        );
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(long).map_err(|e| e.code), Err("too_long"));
    }

    #[test]
    fn name_rules_count_characters_after_trimming() {
        assert_eq!(
            UserName::parse("  Al  ".into()).map(|n| n.0),
            Ok("Al".to_owned())
        );
        assert_eq!(
            UserName::parse(" A ".into()).map_err(|e| e.code),
            Err("too_short")
        );
        assert_eq!(
            UserName::parse("é".repeat(100)).map(|n| n.0.chars().count()),
            Ok(100)
        );
        assert_eq!(
            UserName::parse("é".repeat(101)).map_err(|e| e.code),
            Err("too_long")
        );
        assert_eq!(
            UserName::parse("Ada\u{0007}".into()).map_err(|e| e.code),
            Err("control_character")
        );
    }

    #[test]
    fn new_user_reports_every_failure() {
        let errors = NewUser::from_json(serde_json::json!({"email": 3, "extra": true}))
            .err()
            .unwrap_or_default();
        let found: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.pointer.as_str(), e.code))
            .collect();
        assert_eq!(
            found,
            [
                ("/email", "type"),
                ("/name", "missing"),
                ("/extra", "unknown_field")
            ]
        );
    }
}
