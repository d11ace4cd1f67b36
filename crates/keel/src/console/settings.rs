//! Settings: the log filter this instance runs with (`PUT /admin/log-filter`).

use askama::Template;
use axum::{
    Form,
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
};
use http::Method;
use serde::Deserialize;

use super::{
    ConsoleState,
    error::ConsoleError,
    form::FieldErrors,
    session::Signed,
    view::{Chrome, html, ok},
};

/// The log filter, as the API shows it.
#[derive(Debug, Deserialize)]
struct LogFilter {
    filter: String,
}

#[derive(Template)]
#[template(path = "console/settings.html")]
struct Page {
    chrome: Chrome,
    filter: String,
    errors: FieldErrors,
}

/// `?notice=`.
#[derive(Debug, Deserialize)]
pub struct Notice {
    notice: Option<String>,
}

/// `GET /admin/settings`.
pub async fn page(
    State(state): State<ConsoleState>,
    signed: Signed,
    Query(notice): Query<Notice>,
) -> Result<Response, ConsoleError> {
    let current: LogFilter = state
        .api
        .get(&signed.caller, "/admin/log-filter")
        .await?
        .into_json()?;
    Ok(ok(&Page {
        chrome: Chrome::signed("Settings", "/admin/settings", &signed.session.csrf)
            .notice(notice.notice.as_deref()),
        filter: current.filter,
        errors: FieldErrors::default(),
    }))
}

/// The form.
#[derive(Debug, Deserialize)]
pub struct FilterForm {
    #[serde(default)]
    filter: String,
}

/// `POST /admin/settings`: `PUT /admin/log-filter`.
pub async fn save(
    State(state): State<ConsoleState>,
    signed: Signed,
    Form(form): Form<FilterForm>,
) -> Result<Response, ConsoleError> {
    let reply = state
        .api
        .call(
            &signed.caller,
            Method::PUT,
            "/admin/log-filter",
            Some(&serde_json::json!({ "filter": form.filter })),
            &[],
        )
        .await?;
    if reply.ok() {
        return Ok(Redirect::to("/admin/settings?notice=saved").into_response());
    }
    let status = reply.status;
    let problem = reply.into_problem();
    let errors = FieldErrors::blaming(&problem, "filter");
    Ok(html(
        status,
        &Page {
            chrome: Chrome::signed("Settings", "/admin/settings", &signed.session.csrf),
            filter: form.filter,
            errors,
        },
    ))
}
