//! Users' domain types. An [`Email`] or a [`UserName`] can only exist valid, so storage and
//! handlers never check them again.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use validator::ValidateEmail;

use crate::{
    auth::{Role, password::Password},
    error::FieldError,
    http::extract::{FromJson, Invalid, ObjectReader, string},
};

/// Longest e-mail address accepted (RFC 5321's path limit less the angle brackets).
pub const EMAIL_MAX_CHARS: usize = 254;
/// Shortest name accepted, in characters after trimming.
pub const NAME_MIN_CHARS: usize = 2;
/// Longest name accepted, in characters after trimming.
pub const NAME_MAX_CHARS: usize = 100;

/// A syntactically valid e-mail address, its domain in the ASCII form DNS uses (IDNA,
/// lower case), so that `ada@bücher.example` and `ada@xn--bcher-kva.example` are one
/// address; the local part is kept as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// `address` with its domain converted to ASCII (IDNA, lower case), or as it is when it has
/// no domain or the domain cannot be converted: the form addresses are stored and looked up
/// in.
pub fn canonical_email(address: &str) -> String {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address.to_owned();
    };
    match idna::domain_to_ascii(domain) {
        Ok(ascii) if !ascii.is_empty() => format!("{local}@{ascii}"),
        _ => address.to_owned(),
    }
}

impl Email {
    /// Validates an address.
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        if raw.chars().count() > EMAIL_MAX_CHARS {
            return Err(Invalid::new(
                "too_long",
                format!("must be at most {EMAIL_MAX_CHARS} characters"),
            ));
        }
        let invalid = || {
            Invalid::new(
                "invalid_email",
                "must be a valid e-mail address such as ada@example.com",
            )
        };
        if !raw.validate_email() {
            return Err(invalid());
        }
        let address = canonical_email(&raw);
        if address.chars().count() > EMAIL_MAX_CHARS {
            return Err(Invalid::new(
                "too_long",
                format!("must be at most {EMAIL_MAX_CHARS} characters with its domain in ASCII"),
            ));
        }
        // Also an address lettre can send to, so that every account can get its e-mails.
        if address.parse::<lettre::Address>().is_err() {
            return Err(invalid());
        }
        Ok(Self(address))
    }

    /// The address, its domain in ASCII.
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

fn role(value: Value) -> Result<Role, Invalid> {
    string(value).and_then(|raw| {
        Role::parse(&raw)
            .ok_or_else(|| Invalid::new("invalid_role", "must be \"admin\" or \"user\""))
    })
}

fn boolean(value: Value) -> Result<bool, Invalid> {
    value
        .as_bool()
        .ok_or_else(|| Invalid::new("type", "must be true or false"))
}

fn password(value: Value) -> Result<Password, Invalid> {
    string(value).and_then(Password::parse)
}

/// A stored user.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "019a8f4e-6b1a-7c3e-9d2f-5a4b3c2d1e0f",
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "role": "user",
    "email_verified_at": null,
    "active": true,
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
    /// What the account may do.
    pub role: Role,
    /// When the address was verified (with the token e-mailed to it); `null` until then,
    /// and again after the address changes.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// Whether the account may log in. An admin deactivates an account (`"active": false`
    /// in `PATCH /users/{id}`) to end its sessions and lock it out without deleting it.
    pub active: bool,
    /// Creation time, RFC 3339 UTC.
    pub created_at: DateTime<Utc>,
    /// Time of the last change, RFC 3339 UTC.
    pub updated_at: DateTime<Utc>,
    /// Revision counter behind the `ETag`; not part of the representation.
    #[serde(skip)]
    #[schema(ignore)]
    pub version: i64,
}

/// A validated `POST /users` body (an admin creating an account).
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The address.
    pub email: Email,
    /// The name.
    pub name: UserName,
    /// The password; without one the account cannot log in until it is set.
    pub password: Option<Password>,
    /// The role (default `user`).
    pub role: Role,
    /// Whether the account may log in (default `true`).
    pub active: bool,
}

/// A validated `POST /auth/register` body.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The address.
    pub email: Email,
    /// The name.
    pub name: UserName,
    /// The password.
    pub password: Password,
}

/// A validated `PATCH /users/{id}` body: absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    /// New address.
    pub email: Option<Email>,
    /// New name.
    pub name: Option<UserName>,
    /// New role (admins only).
    pub role: Option<Role>,
    /// Deactivates (`false`) or reactivates (`true`) the account (admins only).
    pub active: Option<bool>,
}

impl UserChanges {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.name.is_none() && self.role.is_none() && self.active.is_none()
    }
}

/// A validated `PATCH /users/me` body: the caller's own record, password included.
#[derive(Debug, Clone, Default)]
pub struct OwnChanges {
    /// Address and name.
    pub changes: UserChanges,
    /// The new password.
    pub password: Option<Password>,
    /// The current password, required to change the e-mail address or the password.
    pub current_password: Option<Password>,
}

const NEW_USER_FIELDS: &[&str] = &["email", "name", "password", "role", "active"];
const REGISTRATION_FIELDS: &[&str] = &["email", "name", "password"];
const CHANGE_FIELDS: &[&str] = &["email", "name", "role", "active"];
const OWN_CHANGE_FIELDS: &[&str] = &["email", "name", "password", "current_password"];

fn email(value: Value) -> Result<Email, Invalid> {
    string(value).and_then(Email::parse)
}

fn name(value: Value) -> Result<UserName, Invalid> {
    string(value).and_then(UserName::parse)
}

impl FromJson for NewUser {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, NEW_USER_FIELDS)?;
        let email = reader.required("email", email);
        let name = reader.required("name", name);
        let password = reader.optional("password", password);
        let role = reader.optional("role", role);
        let active = reader.optional("active", boolean);
        reader.finish()?;
        match (email, name) {
            (Some(email), Some(name)) => Ok(Self {
                email,
                name,
                password,
                role: role.unwrap_or(Role::User),
                active: active.unwrap_or(true),
            }),
            // finish() has reported why one is missing.
            _ => Err(Vec::new()),
        }
    }
}

impl FromJson for Registration {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, REGISTRATION_FIELDS)?;
        let email = reader.required("email", email);
        let name = reader.required("name", name);
        let password = reader.required("password", password);
        reader.finish()?;
        match (email, name, password) {
            (Some(email), Some(name), Some(password)) => Ok(Self {
                email,
                name,
                password,
            }),
            _ => Err(Vec::new()),
        }
    }
}

impl FromJson for UserChanges {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, CHANGE_FIELDS)?;
        let email = reader.optional("email", email);
        let name = reader.optional("name", name);
        let role = reader.optional("role", role);
        let active = reader.optional("active", boolean);
        reader.finish()?;
        Ok(Self {
            email,
            name,
            role,
            active,
        })
    }
}

impl FromJson for OwnChanges {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, OWN_CHANGE_FIELDS)?;
        let email = reader.optional("email", email);
        let name = reader.optional("name", name);
        let password = reader.optional("password", password);
        // The current password is checked against the stored hash, not against the rules
        // (which may have changed since it was set); only its type and size are.
        let current_password = reader.optional("current_password", |value| {
            string(value).and_then(Password::current)
        });
        // Both let whoever holds a stolen access token take the account over for good.
        if (password.is_some() || email.is_some()) && current_password.is_none() {
            reader.fail_field(
                "current_password",
                Invalid::new(
                    "missing",
                    "required to change the e-mail address or the password",
                ),
            );
        }
        reader.finish()?;
        Ok(Self {
            changes: UserChanges {
                email,
                name,
                role: None,
                active: None,
            },
            password,
            current_password,
        })
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
    /// 12–128 characters; without it the account cannot log in.
    #[schema(
        format = "password",
        min_length = 12,
        max_length = 128,
        nullable = false
    )]
    password: Option<String>,
    /// `user` (the default) or `admin`.
    #[schema(nullable = false)]
    role: Option<Role>,
    /// Whether the account may log in (default `true`).
    #[schema(nullable = false)]
    active: Option<bool>,
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
    /// New role; admins only.
    #[schema(nullable = false)]
    role: Option<Role>,
    /// `false` deactivates the account: its sessions end and it cannot log in, refresh or
    /// reset its password until `true` reactivates it. Admins only, and not for their own
    /// account.
    #[schema(nullable = false)]
    active: Option<bool>,
}

/// `PATCH /users/me` body, as documented: every field optional.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"password": "a new long passphrase", "current_password": "correct horse battery staple"}))]
#[allow(dead_code)] // Documents the body (serde's attributes shape the schema); requests are parsed by `FromJson`.
pub struct UpdateMeRequest {
    /// A new e-mail address, at most 254 characters, unique regardless of case; needs
    /// `current_password`.
    #[schema(format = "email", max_length = 254, nullable = false)]
    email: Option<String>,
    /// Display name: trimmed, then 2–100 characters without control characters.
    #[schema(
        min_length = 2,
        nullable = false,
        pattern = r"^\s*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]{0,98}[^\s\x00-\x1F\x7F-\x9F]\s*$"
    )]
    name: Option<String>,
    /// A new password, 12–128 characters; needs `current_password`.
    #[schema(
        format = "password",
        min_length = 12,
        max_length = 128,
        nullable = false
    )]
    password: Option<String>,
    /// The current password, required with `email` or `password`.
    #[schema(
        format = "password",
        min_length = 1,
        max_length = 128,
        nullable = false
    )]
    current_password: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_domains_are_stored_in_ascii() {
        for (given, stored) in [
            ("user@bücher.example", "user@xn--bcher-kva.example"),
            ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
            ("User@BÜCHER.Example", "User@xn--bcher-kva.example"),
            ("Ada@Example.COM", "Ada@example.com"),
        ] {
            assert_eq!(
                Email::parse(given.into()).map(|e| e.0).as_deref(),
                Ok(stored),
                "{given}"
            );
        }
        assert_eq!(canonical_email("no-at-sign"), "no-at-sign");
    }

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
