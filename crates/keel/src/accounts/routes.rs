//! `/auth/*` and `/.well-known/jwks.json`.

use axum::{
    Json,
    extract::{FromRef, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use std::sync::Arc;

use crate::{
    audit::{Audit, AuditKind},
    auth::{
        Auth, INVALID_CREDENTIALS, Principal, Role, TokenPair, keys::Jwks, password::Password,
        sessions::Refresh,
    },
    error::{ApiError, FieldError, Problem},
    http::{
        extract::{FromJson, Invalid, ObjectReader, ValidJson, string},
        ratelimit::ClientIp,
    },
    users::domain::{NewUser, Registration, User, canonical_email},
};

use super::AccountsState;

/// The accounts routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AccountsState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(jwks))
}

/// 401 for a refresh token that is unknown, expired, revoked or spent.
const INVALID_REFRESH: ApiError = ApiError::Unauthorized {
    kind: "/problems/invalid-refresh-token",
    detail: "the refresh token is invalid, expired or already used; log in again",
    challenge: r#"Bearer realm="keel""#,
};

/// `POST /auth/register` answer.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Registered {
    /// The new account.
    pub user: User,
    /// A session for it.
    #[serde(flatten)]
    pub tokens: TokenPair,
}

/// `POST /auth/register` body, as documented.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com", "name": "Ada Lovelace", "password": "correct horse battery staple"}))]
#[allow(dead_code)] // Documents the body; requests are parsed by `FromJson`.
pub struct RegisterRequest {
    /// A valid e-mail address, at most 254 characters; unique regardless of case.
    #[schema(format = "email", max_length = 254)]
    email: String,
    /// Display name: trimmed, then 2–100 characters without control characters.
    #[schema(
        min_length = 2,
        pattern = r"^\s*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]{0,98}[^\s\x00-\x1F\x7F-\x9F]\s*$"
    )]
    name: String,
    /// 12–128 characters.
    #[schema(format = "password", min_length = 12, max_length = 128)]
    password: String,
}

/// `POST /auth/login` body, as documented.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery staple"}))]
#[allow(dead_code)] // Documents the body; requests are parsed into `Login`.
pub struct LoginRequest {
    /// The account's e-mail address (any case).
    #[schema(max_length = 254)]
    email: String,
    /// The password.
    #[schema(format = "password", min_length = 1, max_length = 128)]
    password: String,
}

/// A validated `POST /auth/login` body.
#[derive(Debug)]
struct Login {
    email: String,
    password: Password,
}

impl FromJson for Login {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, &["email", "password"])?;
        // Any string may be an e-mail someone typed: an unknown one is a failed login, not
        // a validation error, so that both look the same.
        let email = reader.required("email", |value| {
            string(value).and_then(|email| {
                if email.chars().count() > 254 {
                    Err(Invalid::new("too_long", "must be at most 254 characters"))
                } else {
                    Ok(email)
                }
            })
        });
        let password = reader.required("password", |value| {
            string(value).and_then(Password::current)
        });
        reader.finish()?;
        match (email, password) {
            (Some(email), Some(password)) => Ok(Self { email, password }),
            _ => Err(Vec::new()),
        }
    }
}

/// `POST /auth/refresh` body, as documented.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; requests are parsed into `RefreshBody`.
pub struct RefreshRequest {
    /// The refresh token of the last pair.
    #[schema(min_length = 1, max_length = 256)]
    refresh_token: String,
}

/// A validated `POST /auth/refresh` body.
#[derive(Debug)]
struct RefreshBody {
    refresh_token: String,
}

impl FromJson for RefreshBody {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, &["refresh_token"])?;
        let token = reader.required("refresh_token", |value| {
            string(value).and_then(|token| {
                if token.is_empty() || token.len() > 256 {
                    Err(Invalid::new("length", "must be 1–256 characters"))
                } else {
                    Ok(token)
                }
            })
        });
        reader.finish()?;
        token
            .map(|refresh_token| Self { refresh_token })
            .ok_or_else(Vec::new)
    }
}

/// Create an account and log in.
///
/// Answers the new user and a token pair. The password is stored as an Argon2id hash. A
/// welcome e-mail and a verification e-mail are sent in the background.
#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "auth",
    request_body(content = RegisterRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered and logged in", body = Registered,
            headers(("Location" = String, description = "URL of the new user"))),
        (status = 409, description = "Another account has this e-mail address", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input: every failing field is listed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many password checks running", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn register(
    State(state): State<AccountsState>,
    ClientIp(ip): ClientIp,
    ValidJson(registration): ValidJson<Registration>,
) -> Result<Response, ApiError> {
    let hash = state.auth.passwords.hash(&registration.password).await?;
    let new = NewUser {
        email: registration.email,
        name: registration.name,
        password: Some(registration.password),
        role: Role::User,
        active: true,
    };
    // The account and its e-mails commit together (a transactional outbox): a rolled-back
    // registration sends nothing, and a committed one always sends them.
    let mut tx = state.db.begin().await?;
    let user = state.users.insert_in(&mut tx, &new, Some(hash)).await?;
    for job in super::email_flows::registration_jobs(user.id) {
        state.jobs.enqueue_in(&mut tx, job).await?;
    }
    tx.commit().await?;
    state.jobs.wake();
    state
        .audit
        .record(Audit::new(AuditKind::Registered, Some(user.id), Some(ip)))
        .await;
    let (session, refresh_token) = state.auth.sessions.start(user.id).await?;
    let tokens = state
        .auth
        .pair(user.id, user.role, session, refresh_token)?;
    let mut headers = no_store();
    if let Ok(location) = HeaderValue::from_str(&format!("/users/{}", user.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(Registered { user, tokens }),
    )
        .into_response())
}

/// Token answers must not be cached (RFC 6749 §5.1).
fn no_store() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

/// Log in with e-mail and password.
///
/// An unknown e-mail, a wrong password and a deactivated account get the same answer after
/// the same work.
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body(content = LoginRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 401, description = "Wrong e-mail or password", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer challenge"))),
        (status = 422, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client or for this account", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many password checks running", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn login(
    State(state): State<AccountsState>,
    ClientIp(ip): ClientIp,
    ValidJson(request): ValidJson<Login>,
) -> Result<Response, ApiError> {
    let account = canonical_email(&request.email).to_lowercase();
    state.rate_limits.check_account(&account).await?;
    let found = state.users.credentials(&request.email).await?;
    let (user, hash) = match &found {
        Some((user, hash)) => (Some(user), hash.as_deref()),
        None => (None, None),
    };
    let valid = state.auth.passwords.verify(hash, &request.password).await?;
    // Checked after the hash, so that a deactivated account takes as long to refuse.
    let Some(user) = user.filter(|user| valid && user.active) else {
        state.rate_limits.record_login_failure(&account).await;
        let audit = Audit::new(AuditKind::LoginFailed, user.map(|u| u.id), Some(ip));
        let audit = match user {
            Some(user) if valid && !user.active => audit.detail("account deactivated"),
            Some(_) => audit.detail("wrong password"),
            None => audit.detail("unknown e-mail address"),
        };
        state.audit.record(audit).await;
        return Err(INVALID_CREDENTIALS);
    };
    let (session, refresh_token) = state.auth.sessions.start(user.id).await?;
    state
        .audit
        .record(Audit::new(
            AuditKind::LoginSucceeded,
            Some(user.id),
            Some(ip),
        ))
        .await;
    let tokens = state
        .auth
        .pair(user.id, user.role, session, refresh_token)?;
    Ok((no_store(), Json(tokens)).into_response())
}

/// Exchange a refresh token for a new pair.
///
/// The presented refresh token is spent. Presenting a spent one again revokes its whole
/// session (every token descended from the same login).
#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "auth",
    request_body(content = RefreshRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A new token pair", body = TokenPair),
        (status = 401, description = "The refresh token is unknown, expired, revoked or spent, or the account is deactivated", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer challenge"))),
        (status = 422, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn refresh(
    State(state): State<AccountsState>,
    ClientIp(ip): ClientIp,
    ValidJson(request): ValidJson<RefreshBody>,
) -> Result<Response, ApiError> {
    let (session, token) = match state.auth.sessions.refresh(&request.refresh_token).await? {
        Refresh::Rotated { session, token } => (session, token),
        Refresh::Reused { session } => {
            state.auth.tokens.revoke([session.family_id]);
            state
                .audit
                .record(
                    Audit::new(AuditKind::RefreshReused, Some(session.user_id), Some(ip))
                        .detail(format!("session {} revoked", session.family_id)),
                )
                .await;
            return Err(INVALID_REFRESH);
        }
        Refresh::Invalid => return Err(INVALID_REFRESH),
    };
    // The account may have been deleted or deactivated since; its role may have changed.
    let Some(user) = state.users.get(session.user_id).await? else {
        return Err(INVALID_REFRESH);
    };
    if !user.active {
        state.auth.sessions.revoke_family(session.family_id).await?;
        state.auth.tokens.revoke([session.family_id]);
        return Err(INVALID_REFRESH);
    }
    let tokens = state
        .auth
        .pair(user.id, user.role, session.family_id, token)?;
    Ok((no_store(), Json(tokens)).into_response())
}

/// End this session.
///
/// Its refresh tokens stop working, and so do its access tokens.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn logout(
    State(state): State<AccountsState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
) -> Result<StatusCode, ApiError> {
    state.auth.sessions.revoke_family(principal.session).await?;
    state.auth.tokens.revoke([principal.session]);
    state
        .audit
        .record(Audit::new(
            AuditKind::Logout,
            Some(principal.user_id),
            Some(ip),
        ))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of this account.
#[utoipa::path(
    post,
    path = "/auth/logout-all",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every session ended"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn logout_all(
    State(state): State<AccountsState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
) -> Result<StatusCode, ApiError> {
    let families = state
        .auth
        .sessions
        .revoke_user(principal.user_id, None)
        .await?;
    state.auth.tokens.revoke(families);
    state.auth.tokens.revoke([principal.session]);
    state
        .audit
        .record(Audit::new(
            AuditKind::LogoutAll,
            Some(principal.user_id),
            Some(ip),
        ))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify keel's access tokens (RFC 7517).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "auth",
    responses((status = 200, description = "The key set", body = Jwks))
)]
async fn jwks(State(state): State<AccountsState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.auth.tokens.keys().jwks()),
    )
        .into_response()
}
