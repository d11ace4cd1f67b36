//! Users: search and pages, create, edit (under the `ETag` the page was read with, so a
//! concurrent edit is a conflict, never an overwrite), delete, force logout, password reset.

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use http::{HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ConsoleState,
    api::Caller,
    error::ConsoleError,
    form::{FieldErrors, listed, query, summary},
    session::Signed,
    view::{Chrome, html, ok},
};

/// Users per page.
const PAGE_SIZE: &str = "25";

/// A user as the API shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct UserView {
    id: Uuid,
    email: String,
    name: String,
    role: String,
    #[serde(default = "yes")]
    active: bool,
    email_verified_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct UserPage {
    items: Vec<UserView>,
    next_cursor: Option<String>,
}

/// `?q=&cursor=&notice=` of the list.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: String,
    notice: Option<String>,
}

#[derive(Template)]
#[template(path = "console/users.html")]
struct ListPage {
    chrome: Chrome,
    q: String,
    users: Vec<UserView>,
    next: Option<String>,
    first: Option<String>,
    errors: FieldErrors,
}

/// `GET /admin/users`.
pub async fn list(
    State(state): State<ConsoleState>,
    signed: Signed,
    Query(params): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let chrome = Chrome::signed("Users", "/admin/users", &signed.session.csrf)
        .notice(params.notice.as_deref());
    let path = format!(
        "/users{}",
        query(&[
            ("limit", PAGE_SIZE),
            ("q", &params.q),
            ("cursor", &params.cursor)
        ])
    );
    let reply = state.api.get(&signed.caller, &path).await?;
    let mut page = ListPage {
        chrome,
        q: params.q.clone(),
        users: Vec::new(),
        next: None,
        first: (!params.cursor.is_empty())
            .then(|| format!("/admin/users{}", query(&[("q", &params.q)]))),
        errors: FieldErrors::default(),
    };
    let found: UserPage = match listed(reply, "q") {
        Ok(reply) => reply.into_json()?,
        Err((status, errors)) => {
            page.errors = errors;
            return Ok(html(status, &page));
        }
    };
    page.users = found.items;
    page.next = found.next_cursor.map(|cursor| {
        format!(
            "/admin/users{}",
            query(&[("q", &params.q), ("cursor", &cursor)])
        )
    });
    Ok(ok(&page))
}

/// The values of the new-user form.
#[derive(Debug, Default, Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

#[derive(Template)]
#[template(path = "console/user_new.html")]
struct NewPage {
    chrome: Chrome,
    form: NewUserForm,
    errors: FieldErrors,
    error: Option<String>,
}

/// `GET /admin/users/new`.
pub async fn new_form(signed: Signed) -> Response {
    ok(&NewPage {
        chrome: Chrome::signed("New user", "/admin/users", &signed.session.csrf),
        form: NewUserForm {
            role: "user".to_owned(),
            ..NewUserForm::default()
        },
        errors: FieldErrors::default(),
        error: None,
    })
}

/// `POST /admin/users`: `POST /users`.
pub async fn create(
    State(state): State<ConsoleState>,
    signed: Signed,
    Form(form): Form<NewUserForm>,
) -> Result<Response, ConsoleError> {
    let mut body = serde_json::json!({
        "email": form.email,
        "name": form.name,
        "role": form.role,
    });
    if !form.password.is_empty() {
        body["password"] = form.password.clone().into();
    }
    let reply = state
        .api
        .call(&signed.caller, Method::POST, "/users", Some(&body), &[])
        .await?;
    if reply.ok() {
        let user: UserView = reply.json()?;
        return Ok(
            Redirect::to(&format!("/admin/users/{}?notice=created", user.id)).into_response(),
        );
    }
    let status = reply.status;
    let problem = reply.into_problem();
    let mut errors = FieldErrors::from_problem(&problem);
    if problem.kind == "/problems/email-taken" {
        errors.insert("email", summary(&problem));
    }
    let error = errors.is_empty().then(|| summary(&problem));
    Ok(html(
        status,
        &NewPage {
            chrome: Chrome::signed("New user", "/admin/users", &signed.session.csrf),
            form: NewUserForm {
                password: String::new(),
                ..form
            },
            errors,
            error,
        },
    ))
}

/// The edit form's values.
#[derive(Debug, Default, Deserialize)]
pub struct EditForm {
    #[serde(default)]
    etag: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    /// A checkbox: present when ticked.
    active: Option<String>,
}

#[derive(Template)]
#[template(path = "console/user.html")]
struct UserPageView {
    chrome: Chrome,
    user: UserView,
    etag: String,
    /// What the form shows (the stored values, or what was sent when it failed).
    email: String,
    name: String,
    role: String,
    active: bool,
    errors: FieldErrors,
    error: Option<String>,
    /// A concurrent edit: what this admin tried to save.
    conflict: Option<EditForm>,
}

async fn fetch(
    state: &ConsoleState,
    caller: &Caller,
    id: Uuid,
) -> Result<(UserView, String), ConsoleError> {
    let reply = state.api.get(caller, &format!("/users/{id}")).await?;
    let etag = reply.etag().unwrap_or_default();
    Ok((reply.into_json()?, etag))
}

fn user_page(signed: &Signed, user: UserView, etag: String) -> UserPageView {
    UserPageView {
        chrome: Chrome::signed(user.email.clone(), "/admin/users", &signed.session.csrf),
        etag,
        email: user.email.clone(),
        name: user.name.clone(),
        role: user.role.clone(),
        active: user.active,
        user,
        errors: FieldErrors::default(),
        error: None,
        conflict: None,
    }
}

/// `?notice=` after a redirect.
#[derive(Debug, Deserialize)]
pub struct Notice {
    notice: Option<String>,
}

/// `GET /admin/users/{id}`.
pub async fn show(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
    Query(notice): Query<Notice>,
) -> Result<Response, ConsoleError> {
    let (user, etag) = fetch(&state, &signed.caller, id).await?;
    let mut page = user_page(&signed, user, etag);
    page.chrome = page.chrome.notice(notice.notice.as_deref());
    Ok(ok(&page))
}

fn if_match(etag: &str) -> Vec<(http::HeaderName, HeaderValue)> {
    HeaderValue::from_str(etag)
        .ok()
        .filter(|_| !etag.is_empty())
        .map(|value| vec![(header::IF_MATCH, value)])
        .unwrap_or_default()
}

/// `POST /admin/users/{id}`: `PATCH /users/{id}` with `If-Match` the page's `ETag`.
pub async fn save(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
    Form(form): Form<EditForm>,
) -> Result<Response, ConsoleError> {
    if form.etag.is_empty() {
        return Err(ConsoleError::Forbidden(
            "the form does not say which revision it edits; reload the page",
        ));
    }
    let body = serde_json::json!({
        "email": form.email,
        "name": form.name,
        "role": form.role,
        "active": form.active.is_some(),
    });
    let reply = state
        .api
        .call(
            &signed.caller,
            Method::PATCH,
            &format!("/users/{id}"),
            Some(&body),
            &if_match(&form.etag),
        )
        .await?;
    if reply.ok() {
        return Ok(Redirect::to(&format!("/admin/users/{id}?notice=saved")).into_response());
    }
    let status = reply.status;
    let problem = reply.into_problem();
    if status == StatusCode::PRECONDITION_FAILED {
        // Someone saved in between: show what is stored now and what this admin sent.
        let (user, etag) = fetch(&state, &signed.caller, id).await?;
        let mut page = user_page(&signed, user, etag);
        page.error = Some(
            "Someone else changed this user after you opened the page, so nothing was saved. \
             The form now shows the stored values; make your change again if it still applies."
                .to_owned(),
        );
        page.conflict = Some(form);
        return Ok(html(StatusCode::CONFLICT, &page));
    }
    if status == StatusCode::NOT_FOUND {
        return Err(ConsoleError::Api(Box::new(problem)));
    }
    let (user, etag) = fetch(&state, &signed.caller, id).await?;
    let mut page = user_page(&signed, user, etag);
    page.errors = FieldErrors::from_problem(&problem);
    if problem.kind == "/problems/email-taken" {
        page.errors.insert("email", summary(&problem));
    }
    page.error = Some(if page.errors.is_empty() {
        summary(&problem)
    } else {
        "Nothing was saved: check the fields below.".to_owned()
    });
    page.etag = form.etag;
    page.email = form.email;
    page.name = form.name;
    page.role = form.role;
    page.active = form.active.is_some();
    Ok(html(status, &page))
}

#[derive(Template)]
#[template(path = "console/user_delete.html")]
struct DeletePage {
    chrome: Chrome,
    user: UserView,
    etag: String,
}

/// `GET /admin/users/{id}/delete`: asks for confirmation.
pub async fn confirm_delete(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let (user, etag) = fetch(&state, &signed.caller, id).await?;
    Ok(ok(&DeletePage {
        chrome: Chrome::signed(
            format!("Delete {}?", user.email),
            "/admin/users",
            &signed.session.csrf,
        ),
        user,
        etag,
    }))
}

/// The confirmation's form.
#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    etag: String,
}

/// `POST /admin/users/{id}/delete`: `DELETE /users/{id}` under the confirmed revision.
pub async fn delete(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
    Form(form): Form<DeleteForm>,
) -> Result<Response, ConsoleError> {
    state
        .api
        .call_ok(
            &signed.caller,
            Method::DELETE,
            &format!("/users/{id}"),
            None,
            &if_match(&form.etag),
        )
        .await?;
    Ok(Redirect::to("/admin/users?notice=deleted").into_response())
}

/// `POST /admin/users/{id}/logout`: ends every session of the user.
pub async fn force_logout(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    state
        .api
        .act(&signed.caller, Method::POST, &format!("/users/{id}/logout"))
        .await?;
    Ok(Redirect::to(&format!("/admin/users/{id}?notice=logged-out")).into_response())
}

/// `POST /admin/users/{id}/password-reset`: `POST /auth/forgot-password` for the user's
/// address.
pub async fn send_reset(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let (user, _) = fetch(&state, &signed.caller, id).await?;
    state
        .api
        .call_ok(
            &signed.caller,
            Method::POST,
            "/auth/forgot-password",
            Some(&serde_json::json!({ "email": user.email })),
            &[],
        )
        .await?;
    Ok(Redirect::to(&format!("/admin/users/{id}?notice=reset-sent")).into_response())
}
