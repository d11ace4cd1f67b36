//! `/users`: create, read, list, update and delete users.

use std::sync::Arc;

use axum::{
    Json,
    extract::{FromRef, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit::{Audit, AuditKind},
    auth::{Admin, Auth, Principal, Role},
    error::{ApiError, Problem},
    http::{
        conditional::{ETag, IfMatch, IfNoneMatch},
        extract::{QueryPairs, UuidParam, ValidJson},
        pagination::{self, PageRequest},
        ratelimit::ClientIp,
    },
};

use super::{
    UsersState, VERIFY_ADDRESS_JOB,
    domain::{
        CreateUserRequest, EMAIL_MAX_CHARS, NewUser, OwnChanges, UpdateMeRequest,
        UpdateUserRequest, User, UserChanges,
    },
    store::{ListQuery, StoreError},
};

/// How often a write is retried when another write to the same user slips in between
/// reading and writing (only without `If-Match`; with it, the precondition decides).
const WRITE_ATTEMPTS: usize = 5;

/// The users routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    UsersState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(create_user, list_users))
        .routes(routes!(get_me, update_me))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(logout_user))
}

impl From<StoreError> for ApiError {
    #[track_caller]
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::EmailTaken => ApiError::Conflict {
                kind: "/problems/email-taken",
                title: "E-mail address already taken",
                detail: "another user already has this e-mail address".to_owned(),
            },
            StoreError::VersionMismatch => ApiError::Conflict {
                kind: "/problems/concurrent-update",
                title: "Concurrent update",
                detail: "the user kept changing while this request ran; try again".to_owned(),
            },
            StoreError::Database(e) => e.into(),
            StoreError::Lost(e) => ApiError::internal(e),
        }
    }
}

const NOT_FOUND: ApiError = ApiError::NotFound("no user with this id");

/// Whether `principal` may see and change user `id`: their own record, or any as an admin.
/// Anyone else is answered [`NOT_FOUND`], so ids of other accounts reveal nothing.
fn visible(principal: &Principal, id: uuid::Uuid) -> Result<(), ApiError> {
    if principal.is_admin() || principal.user_id == id {
        Ok(())
    } else {
        Err(NOT_FOUND)
    }
}

/// A user with its `ETag`.
fn user_response(status: StatusCode, user: &User, extra: HeaderMap) -> Response {
    let mut response = (status, extra, Json(user)).into_response();
    response.headers_mut().insert(
        header::ETAG,
        ETag::from_version(user.version).header_value(),
    );
    response
}

/// Create a user (admins only).
///
/// Without a `password` the account cannot log in until one is set. Honours
/// `Idempotency-Key`: a retry with the same key and body gets the first answer again.
#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    security(("bearer" = [])),
    request_body(content = CreateUserRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[\x21-\x7E]{1,255}$", description = "Makes retries safe: the same key and body return the first answer (1–255 visible ASCII characters)")),
    responses(
        (status = 201, description = "Created", body = User,
            headers(("Location" = String, description = "URL of the new user"), ("ETag" = String, description = "Entity tag of the stored revision"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another user has this e-mail address, or a request with the same Idempotency-Key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input: every failing field is listed", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "/problems/validation", "title": "Validation failed", "status": 422, "detail": "2 inputs failed validation",
                "errors": [{"location": "body", "pointer": "/email", "code": "invalid_email", "detail": "must be a valid e-mail address such as ada@example.com"},
                           {"location": "body", "pointer": "/name", "code": "missing", "detail": "this field is required"}],
                "instance": "/users", "request_id": "019a8f4e-6b1a-7c3e-9d2f-5a4b3c2d1e0f"})),
    )
)]
async fn create_user(
    State(state): State<UsersState>,
    Admin(admin): Admin,
    ClientIp(ip): ClientIp,
    ValidJson(new): ValidJson<NewUser>,
) -> Result<Response, ApiError> {
    let hash = match &new.password {
        Some(password) => Some(state.auth.passwords.hash(password).await?),
        None => None,
    };
    let user = state.users.insert(&new, hash).await?;
    // Granting admin is a security event; creating a plain account is not (and auditing it
    // would double the writes of the busiest route).
    if user.role == Role::Admin {
        state
            .audit
            .record(
                Audit::new(AuditKind::Created, Some(user.id), Some(ip))
                    .by(admin.user_id)
                    .detail("admin"),
            )
            .await;
    }
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/users/{}", user.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok(user_response(StatusCode::CREATED, &user, headers))
}

/// Get a user (yourself, or anyone as an admin).
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "User id"),
        ("If-None-Match" = Option<String>, Header, pattern = r#"^(\*|(W/)?"[!#-~]*"(, ?(W/)?"[!#-~]*")*)$"#, description = "Answer 304 if the user still has one of these entity tags"),
    ),
    responses(
        (status = 200, description = "The user", body = User,
            headers(("ETag" = String, description = "Entity tag of the stored revision"))),
        (status = 304, description = "Not modified since the given entity tag",
            headers(("ETag" = String, description = "Entity tag of the stored revision"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user (or not yours)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_user(
    State(state): State<UsersState>,
    principal: Principal,
    UuidParam(id): UuidParam,
    if_none_match: IfNoneMatch,
) -> Result<Response, ApiError> {
    visible(&principal, id)?;
    let user = state.users.get_cached(id).await?.ok_or(NOT_FOUND)?;
    let etag = ETag::from_version(user.version);
    if if_none_match.is_fresh(&etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag.header_value())],
        )
            .into_response());
    }
    Ok(user_response(StatusCode::OK, &user, HeaderMap::new()))
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    /// Users, newest first.
    pub items: Vec<User>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// List users, newest first (admins only).
///
/// Keyset-paginated: follow `next_cursor` (or the `Link` header) for the next page.
#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, pattern = r"^az[E-H][A-Za-z0-9_-]{21}$", description = "The next_cursor of the previous page"),
        ("q" = Option<String>, Query, max_length = 254, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$", description = "Case-insensitive text to find in the e-mail or the name (no control characters)"),
    ),
    responses(
        (status = 200, description = "A page of users", body = UserPage,
            headers(("Link" = String, description = "RFC 8288 link to the next page (rel=\"next\"), when there is one"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameters", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_users(
    State(state): State<UsersState>,
    _admin: Admin,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let page = PageRequest::from_query(&query, &mut errors);
    let search = query.text_filter("q", EMAIL_MAX_CHARS, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (items, more) = state
        .users
        .list(&ListQuery {
            limit: page.limit,
            after: page.after,
            search: search.map(str::to_owned),
        })
        .await?;
    let last = items.last().map(|u| u.id);
    let params: Vec<(&str, &str)> = search.map(|q| ("q", q)).into_iter().collect();
    let (next_cursor, headers) = pagination::next_page("/users", &params, page.limit, last, more);
    Ok((headers, Json(UserPage { items, next_cursor })).into_response())
}

/// Update a user (partial): yourself, or anyone as an admin.
///
/// Absent fields are left as they are. Only an admin may change a `role`; the account's
/// sessions then end, so its next token carries the new role. Only an admin may set
/// `active`, and not on their own account: `false` ends every session of the account and
/// keeps it from logging in until `true` reactivates it. With `If-Match`, the update
/// applies only to that revision.
#[utoipa::path(
    patch,
    path = "/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    request_body(content = UpdateUserRequest, content_type = "application/json"),
    params(
        ("id" = uuid::Uuid, Path, description = "User id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|(W/)?"[!#-~]*"(, ?(W/)?"[!#-~]*")*)$"#, description = "Apply only if the user still has one of these entity tags"),
    ),
    responses(
        (status = 200, description = "The updated user", body = User,
            headers(("ETag" = String, description = "Entity tag of the stored revision"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only an admin may change a role or `active`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user (or not yours)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another user has this e-mail address, or an admin tried to deactivate their own account", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The user changed since the given entity tag", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input: every failing field is listed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_user(
    State(state): State<UsersState>,
    principal: Principal,
    ClientIp(ip): ClientIp,
    UuidParam(id): UuidParam,
    if_match: IfMatch,
    ValidJson(changes): ValidJson<UserChanges>,
) -> Result<Response, ApiError> {
    visible(&principal, id)?;
    if changes.role.is_some() && !principal.is_admin() {
        return Err(ApiError::Forbidden("only an admin may change a role"));
    }
    if changes.active.is_some() && !principal.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin may deactivate or reactivate an account",
        ));
    }
    // An admin locked out of their own account could not undo it.
    if changes.active == Some(false) && principal.user_id == id {
        return Err(ApiError::Conflict {
            kind: "/problems/cannot-deactivate-self",
            title: "Cannot deactivate your own account",
            detail: "an admin cannot deactivate their own account; another admin can".to_owned(),
        });
    }
    let (before, user) = apply(&state, id, &if_match, &changes).await?;
    let deactivated = before.active && !user.active;
    if before.role != user.role || deactivated {
        let families = state.auth.sessions.revoke_user(id, None).await?;
        state.auth.tokens.revoke(families);
    }
    if before.active != user.active {
        let kind = if user.active {
            AuditKind::Reactivated
        } else {
            AuditKind::Deactivated
        };
        state
            .audit
            .record(Audit::new(kind, Some(id), Some(ip)).by(principal.user_id))
            .await;
    }
    if before.role != user.role {
        state
            .audit
            .record(
                Audit::new(AuditKind::RoleChanged, Some(id), Some(ip))
                    .by(principal.user_id)
                    .detail(format!(
                        "{} -> {}",
                        before.role.as_str(),
                        user.role.as_str()
                    )),
            )
            .await;
    }
    Ok(user_response(StatusCode::OK, &user, HeaderMap::new()))
}

/// Applies `changes` to user `id` under `if_match`, retrying when another write slips in;
/// returns the revision it changed and the new one.
async fn apply(
    state: &UsersState,
    id: uuid::Uuid,
    if_match: &IfMatch,
    changes: &UserChanges,
) -> Result<(User, User), ApiError> {
    for _ in 0..WRITE_ATTEMPTS {
        let current = state.users.get(id).await?.ok_or(NOT_FOUND)?;
        if !if_match.matches(&ETag::from_version(current.version)) {
            return Err(ApiError::PreconditionFailed);
        }
        if changes.is_empty() {
            return Ok((current.clone(), current));
        }
        match state.users.update(&current, changes).await {
            Ok(user) => {
                if !user.email.eq_ignore_ascii_case(&current.email) {
                    verify_new_address(state, user.id).await;
                }
                return Ok((current, user));
            }
            // Changed or deleted in between: read again and re-check.
            Err(StoreError::VersionMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::VersionMismatch.into())
}

/// Sends a verification e-mail to a changed address. A failure here is only logged: the
/// change is made, and `POST /auth/verify-email/resend` sends the e-mail again.
async fn verify_new_address(state: &UsersState, id: uuid::Uuid) {
    let job = crate::jobs::NewJob::new(VERIFY_ADDRESS_JOB, serde_json::json!({ "user_id": id }));
    if let Err(error) = state.jobs.enqueue(job).await {
        tracing::warn!(%error, user_id = %id, "cannot queue the verification of a new address");
    }
}

/// Your own account.
#[utoipa::path(
    get,
    path = "/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's user", body = User,
            headers(("ETag" = String, description = "Entity tag of the stored revision"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The account was deleted", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_me(
    State(state): State<UsersState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    let user = state
        .users
        .get_cached(principal.user_id)
        .await?
        .ok_or(NOT_FOUND)?;
    Ok(user_response(StatusCode::OK, &user, HeaderMap::new()))
}

/// Change your own name, e-mail address or password.
///
/// A new `email` or `password` needs the `current_password`; a new password ends every
/// other session of the account.
#[utoipa::path(
    patch,
    path = "/users/me",
    tag = "users",
    security(("bearer" = [])),
    request_body(content = UpdateMeRequest, content_type = "application/json"),
    params(
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|(W/)?"[!#-~]*"(, ?(W/)?"[!#-~]*")*)$"#, description = "Apply only if the user still has one of these entity tags"),
    ),
    responses(
        (status = 200, description = "The updated user", body = User,
            headers(("ETag" = String, description = "Entity tag of the stored revision"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The account was deleted", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another user has this e-mail address", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The user changed since the given entity tag", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "current_password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input: every failing field is listed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong passwords for this account", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_me(
    State(state): State<UsersState>,
    principal: Principal,
    ClientIp(ip): ClientIp,
    if_match: IfMatch,
    ValidJson(own): ValidJson<OwnChanges>,
) -> Result<Response, ApiError> {
    let me = principal.user_id;
    if let Some(current_password) = &own.current_password {
        let user = state.users.get(me).await?.ok_or(NOT_FOUND)?;
        let account = user.email.to_lowercase();
        state.rate_limits.check_account(&account).await?;
        let hash = state.users.password_hash(me).await?;
        if !state
            .auth
            .passwords
            .verify(hash.as_deref(), current_password)
            .await?
        {
            state.rate_limits.record_login_failure(&account).await;
            return Err(ApiError::Forbidden(
                "current_password is not the account's password",
            ));
        }
    }
    let (_, mut user) = apply(&state, me, &if_match, &own.changes).await?;
    if let Some(password) = &own.password {
        let hash = state.auth.passwords.hash(password).await?;
        user = loop {
            match state.users.set_password(&user, hash.clone()).await {
                Ok(updated) => break updated,
                Err(StoreError::VersionMismatch) => {
                    user = state.users.get(me).await?.ok_or(NOT_FOUND)?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let families = state
            .auth
            .sessions
            .revoke_user(me, Some(principal.session))
            .await?;
        state.auth.tokens.revoke(families);
        state
            .audit
            .record(Audit::new(AuditKind::PasswordChanged, Some(me), Some(ip)))
            .await;
    }
    Ok(user_response(StatusCode::OK, &user, HeaderMap::new()))
}

/// End every session of a user (admins only).
///
/// The account's refresh tokens stop working, and so do its access tokens; it can log in
/// again (unless it is deactivated).
#[utoipa::path(
    post,
    path = "/users/{id}/logout",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Every session of the user ended"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn logout_user(
    State(state): State<UsersState>,
    Admin(admin): Admin,
    ClientIp(ip): ClientIp,
    UuidParam(id): UuidParam,
) -> Result<StatusCode, ApiError> {
    if state.users.get(id).await?.is_none() {
        return Err(NOT_FOUND);
    }
    let families = state.auth.sessions.revoke_user(id, None).await?;
    state.auth.tokens.revoke(families);
    state
        .audit
        .record(
            Audit::new(AuditKind::LogoutAll, Some(id), Some(ip))
                .by(admin.user_id)
                .detail("by an admin"),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a user (yourself, or anyone as an admin); its sessions end.
#[utoipa::path(
    delete,
    path = "/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "User id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^(\*|(W/)?"[!#-~]*"(, ?(W/)?"[!#-~]*")*)$"#, description = "Delete only if the user still has one of these entity tags"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user (or not yours)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The user changed since the given entity tag", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_user(
    State(state): State<UsersState>,
    principal: Principal,
    UuidParam(id): UuidParam,
    if_match: IfMatch,
) -> Result<StatusCode, ApiError> {
    visible(&principal, id)?;
    for _ in 0..WRITE_ATTEMPTS {
        let current = state.users.get(id).await?.ok_or(NOT_FOUND)?;
        if !if_match.matches(&ETag::from_version(current.version)) {
            return Err(ApiError::PreconditionFailed);
        }
        // Mark the sessions revoked first: deleting the user deletes their rows.
        let families = state.auth.sessions.revoke_user(id, None).await?;
        state.auth.tokens.revoke(families);
        match state.users.delete(id, current.version).await {
            Ok(()) => return Ok(StatusCode::NO_CONTENT),
            Err(StoreError::VersionMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::VersionMismatch.into())
}
