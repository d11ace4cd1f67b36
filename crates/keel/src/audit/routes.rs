//! `GET /admin/audit-events`: the audit trail, for admins.

use std::sync::Arc;

use axum::{
    Json,
    extract::{FromRef, State},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{Admin, Auth},
    error::{ApiError, Problem},
    http::{
        extract::QueryPairs,
        pagination::{self, PageRequest},
    },
};

use super::{AuditEvent, AuditLog};

/// The audit routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    AuditLog: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(list_events))
}

/// A page of audit events.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Events, newest first.
    pub items: Vec<AuditEvent>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// List security events, newest first (admins only).
#[utoipa::path(
    get,
    path = "/admin/audit-events",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, pattern = r"^az[E-H][A-Za-z0-9_-]{21}$", description = "The next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of events", body = AuditPage,
            headers(("Link" = String, description = "RFC 8288 link to the next page (rel=\"next\"), when there is one"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameters", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_events(
    State(audit): State<AuditLog>,
    _admin: Admin,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let page = PageRequest::from_query(&query, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (items, more) = audit.page(page.limit, page.after).await?;
    let last = items.last().map(|e| e.id);
    let (next_cursor, headers) =
        pagination::next_page("/admin/audit-events", &[], page.limit, last, more);
    Ok((headers, Json(AuditPage { items, next_cursor })).into_response())
}
