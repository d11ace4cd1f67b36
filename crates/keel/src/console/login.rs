//! Signing in and out: the form, `POST /auth/login` in process, and the session cookie.

use askama::Template;
use axum::{
    Form,
    extract::{Query, State},
    http::request::Parts,
    response::{IntoResponse, Redirect, Response},
};
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;

use super::{
    ConsoleState,
    error::ConsoleError,
    form::FieldErrors,
    session::{self, PairReply, Session, Signed, safe_next},
    view::{Chrome, html},
};

/// The sign-in page.
#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    chrome: Chrome,
    login_csrf: String,
    next: String,
    email: String,
    error: Option<String>,
    errors: FieldErrors,
}

/// `?next=` of the sign-in page.
#[derive(Debug, Deserialize)]
pub struct Next {
    next: Option<String>,
    notice: Option<String>,
}

fn next_or_overview(next: Option<String>) -> String {
    next.filter(|n| safe_next(n))
        .unwrap_or_else(|| "/admin/".to_owned())
}

/// Renders the form with a fresh CSRF token in its cookie.
fn form(
    state: &ConsoleState,
    status: StatusCode,
    page: LoginPage,
) -> Result<Response, ConsoleError> {
    let mut response = html(status, &page);
    response
        .headers_mut()
        .append(header::SET_COOKIE, state.cookies.login(&page.login_csrf));
    Ok(response)
}

fn login_page(next: String, email: String) -> Result<LoginPage, ConsoleError> {
    Ok(LoginPage {
        chrome: Chrome::bare("Sign in"),
        login_csrf: session::random_token()?,
        next,
        email,
        error: None,
        errors: FieldErrors::default(),
    })
}

/// `GET /admin/login`.
pub async fn page(
    State(state): State<ConsoleState>,
    Query(query): Query<Next>,
) -> Result<Response, ConsoleError> {
    let mut page = login_page(next_or_overview(query.next), String::new())?;
    page.chrome = page.chrome.notice(query.notice.as_deref());
    form(&state, StatusCode::OK, page)
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /admin/login`: logs in through the API (its rate limits, lockout and audit apply),
/// then keeps the session only for an admin.
pub async fn sign_in(
    State(state): State<ConsoleState>,
    parts: Parts,
    Form(credentials): Form<Credentials>,
) -> Result<Response, ConsoleError> {
    let next = next_or_overview(Some(credentials.next));
    let mut page = login_page(next.clone(), credentials.email.clone())?;
    let expected = session::login_token(&parts.headers);
    if !expected.is_some_and(|token| session::same_secret(&token, &credentials.csrf)) {
        page.error = Some("The form was out of date; please sign in again.".to_owned());
        return form(&state, StatusCode::FORBIDDEN, page);
    }
    let caller = session::anonymous(&parts);
    let reply = state
        .api
        .call(
            &caller,
            Method::POST,
            "/auth/login",
            Some(&serde_json::json!({
                "email": credentials.email,
                "password": credentials.password,
            })),
            &[],
        )
        .await?;
    if !reply.ok() {
        let status = reply.status;
        let retry = reply
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let problem = reply
            .problem
            .unwrap_or_else(|| crate::error::Problem::from_status(status));
        page.errors = FieldErrors::from_problem(&problem);
        page.error = Some(match (status, retry) {
            (StatusCode::TOO_MANY_REQUESTS, Some(secs)) => {
                format!("Too many attempts; try again in {secs} seconds.")
            }
            _ if !page.errors.is_empty() => "Check the fields below.".to_owned(),
            _ => problem.detail.unwrap_or_else(|| problem.title.to_owned()),
        });
        return form(&state, status, page);
    }
    let pair: PairReply = reply.json()?;
    let principal = state.auth.tokens.verify(&pair.access_token).map_err(|e| {
        ConsoleError::Internal(anyhow::anyhow!("a fresh access token does not verify: {e}"))
    })?;
    if !principal.is_admin() {
        // Not an admin: end the session the login just started.
        let mut caller = caller;
        caller.token = Some(pair.access_token);
        let _ = state
            .api
            .call(&caller, Method::POST, "/auth/logout", None, &[])
            .await;
        page.error = Some("Only administrators may use the console.".to_owned());
        return form(&state, StatusCode::FORBIDDEN, page);
    }
    let session = Session::new(pair)?;
    let mut response = Redirect::to(&next).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, state.cookies.set(&session)?);
    Ok(response)
}

/// `POST /admin/logout`: ends the session in the API and forgets the cookie.
pub async fn sign_out(
    State(state): State<ConsoleState>,
    signed: Signed,
) -> Result<Response, ConsoleError> {
    let reply = state
        .api
        .call(&signed.caller, Method::POST, "/auth/logout", None, &[])
        .await?;
    if !reply.ok() && reply.status != StatusCode::UNAUTHORIZED {
        return Err(reply.into_error());
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::SET_COOKIE, state.cookies.clear());
    Ok((headers, Redirect::to("/admin/login?notice=signed-out")).into_response())
}
