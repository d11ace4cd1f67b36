//! Jobs: filter by state and kind, a job's attempts and last error, retry a dead one,
//! cancel a queued one.

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use http::Method;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ConsoleState,
    error::ConsoleError,
    form::{FieldErrors, choices, listed, query},
    session::Signed,
    view::{Chrome, html, ok},
};

/// The states a job can be filtered by.
const STATES: [&str; 5] = ["queued", "running", "succeeded", "dead", "cancelled"];

/// A job as the API shows it.
#[derive(Debug, Deserialize)]
pub struct JobView {
    id: Uuid,
    kind: String,
    payload: serde_json::Value,
    state: String,
    attempts: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl JobView {
    /// The payload, indented.
    fn payload_text(&self) -> String {
        serde_json::to_string_pretty(&self.payload).unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
struct JobList {
    items: Vec<JobView>,
    next_cursor: Option<String>,
}

/// `?state=&kind=&cursor=&notice=`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    cursor: String,
}

#[derive(Template)]
#[template(path = "console/jobs.html")]
struct ListPage {
    chrome: Chrome,
    states: Vec<(&'static str, bool)>,
    kind: String,
    jobs: Vec<JobView>,
    next: Option<String>,
    errors: FieldErrors,
}

/// `GET /admin/jobs`.
pub async fn list(
    State(state): State<ConsoleState>,
    signed: Signed,
    Query(params): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let path = format!(
        "/jobs{}",
        query(&[
            ("limit", "25"),
            ("state", &params.state),
            ("kind", &params.kind),
            ("cursor", &params.cursor),
        ])
    );
    let reply = state.api.get(&signed.caller, &path).await?;
    let mut page = ListPage {
        chrome: Chrome::signed("Jobs", "/admin/jobs", &signed.session.csrf),
        states: choices(STATES, &params.state),
        kind: params.kind.clone(),
        jobs: Vec::new(),
        next: None,
        errors: FieldErrors::default(),
    };
    let found: JobList = match listed(reply, "kind") {
        Ok(reply) => reply.into_json()?,
        Err((status, errors)) => {
            page.errors = errors;
            return Ok(html(status, &page));
        }
    };
    page.jobs = found.items;
    page.next = found.next_cursor.map(|cursor| {
        format!(
            "/admin/jobs{}",
            query(&[
                ("state", &params.state),
                ("kind", &params.kind),
                ("cursor", &cursor)
            ])
        )
    });
    Ok(ok(&page))
}

#[derive(Template)]
#[template(path = "console/job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobView,
}

/// `?notice=`.
#[derive(Debug, Deserialize)]
pub struct Notice {
    notice: Option<String>,
}

/// `GET /admin/jobs/{id}`.
pub async fn show(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
    Query(notice): Query<Notice>,
) -> Result<Response, ConsoleError> {
    let job: JobView = state
        .api
        .get(&signed.caller, &format!("/jobs/{id}"))
        .await?
        .into_json()?;
    Ok(ok(&JobPage {
        chrome: Chrome::signed(
            format!("Job {}", job.kind),
            "/admin/jobs",
            &signed.session.csrf,
        )
        .notice(notice.notice.as_deref()),
        job,
    }))
}

async fn act(
    state: &ConsoleState,
    signed: &Signed,
    id: Uuid,
    action: &str,
    notice: &str,
) -> Result<Response, ConsoleError> {
    state
        .api
        .act(
            &signed.caller,
            Method::POST,
            &format!("/jobs/{id}/{action}"),
        )
        .await?;
    Ok(Redirect::to(&format!("/admin/jobs/{id}?notice={notice}")).into_response())
}

/// `POST /admin/jobs/{id}/retry`: `POST /jobs/{id}/retry`.
pub async fn retry(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    act(&state, &signed, id, "retry", "retried").await
}

/// `POST /admin/jobs/{id}/cancel`: `POST /jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    act(&state, &signed, id, "cancel", "cancelled").await
}
