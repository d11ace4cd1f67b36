//! `/jobs`: the admin API of the job queue.

use std::sync::Arc;

use axum::{
    Json,
    extract::{FromRef, State},
    response::{IntoResponse, Response},
};
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{Admin, Auth},
    error::{ApiError, Problem},
    http::{
        extract::{QueryPairs, UuidParam},
        pagination::{self, PageRequest},
    },
};

use super::{Job, JobQuery, JobState, Jobs};

/// The jobs routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Jobs: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(retry_job))
        .routes(routes!(cancel_job))
}

/// Longest `kind` filter accepted.
const MAX_KIND_CHARS: usize = 100;

const NOT_FOUND: ApiError = ApiError::NotFound("no job with this id");

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Jobs, newest first.
    pub items: Vec<Job>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// List jobs, newest first (admins only).
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    security(("bearer" = [])),
    params(
        ("state" = Option<JobState>, Query, description = "Only jobs in this state"),
        ("kind" = Option<String>, Query, max_length = 100, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$", description = "Only jobs of this kind, such as email.welcome (no control characters)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, pattern = r"^az[E-H][A-Za-z0-9_-]{21}$", description = "The next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobList,
            headers(("Link" = String, description = "RFC 8288 link to the next page (rel=\"next\"), when there is one"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameters", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_jobs(
    State(jobs): State<Jobs>,
    _admin: Admin,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let page = PageRequest::from_query(&query, &mut errors);
    let job_state = query.state_filter(
        JobState::parse,
        "queued, running, succeeded, dead, cancelled",
        &mut errors,
    );
    let kind = query
        .text_filter("kind", MAX_KIND_CHARS, &mut errors)
        .map(str::to_owned);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (items, more) = jobs
        .store()
        .list(&JobQuery {
            state: job_state,
            kind: kind.clone(),
            limit: page.limit,
            after: page.after,
        })
        .await?;
    let last = items.last().map(|job| job.id);
    let mut params = Vec::new();
    if let Some(job_state) = job_state {
        params.push(("state", job_state.as_str()));
    }
    if let Some(kind) = &kind {
        params.push(("kind", kind.as_str()));
    }
    let (next_cursor, headers) = pagination::next_page("/jobs", &params, page.limit, last, more);
    Ok((headers, Json(JobList { items, next_cursor })).into_response())
}

/// One job (admins only).
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_job(
    State(jobs): State<Jobs>,
    _admin: Admin,
    UuidParam(id): UuidParam,
) -> Result<Json<Job>, ApiError> {
    jobs.store().get(id).await?.map(Json).ok_or(NOT_FOUND)
}

/// Queue a dead job again, with fresh attempts (admins only).
#[utoipa::path(
    post,
    path = "/jobs/{id}/retry",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses(
        (status = 202, description = "Queued again", body = Job),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not dead", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn retry_job(
    State(jobs): State<Jobs>,
    _admin: Admin,
    UuidParam(id): UuidParam,
) -> Result<Response, ApiError> {
    let store = jobs.store();
    match store.retry_dead(id).await? {
        None => return Err(NOT_FOUND),
        Some(false) => {
            return Err(ApiError::Conflict {
                kind: "/problems/job-not-dead",
                title: "Job not dead",
                detail: "only a dead job can be retried".to_owned(),
            });
        }
        Some(true) => {}
    }
    jobs.wake();
    let job = store.get(id).await?.ok_or(NOT_FOUND)?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

/// Cancel a job that is still queued, so that it never runs (admins only).
///
/// A job a worker already holds, or one that has finished, cannot be cancelled. The job
/// stays listed, `cancelled`, and a `job.cancelled` event is published.
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled", body = Job),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not queued (it is running or finished)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn cancel_job(
    State(jobs): State<Jobs>,
    _admin: Admin,
    UuidParam(id): UuidParam,
) -> Result<Json<Job>, ApiError> {
    let store = jobs.store();
    match store.cancel_queued(id).await? {
        None => return Err(NOT_FOUND),
        Some(false) => {
            return Err(ApiError::Conflict {
                kind: "/problems/job-not-queued",
                title: "Job not queued",
                detail: "only a queued job can be cancelled; this one is running or finished"
                    .to_owned(),
            });
        }
        Some(true) => {}
    }
    store.get(id).await?.map(Json).ok_or(NOT_FOUND)
}
