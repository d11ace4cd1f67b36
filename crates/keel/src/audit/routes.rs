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
    error::{ApiError, FieldError, InputLocation, Problem},
    http::{
        extract::QueryPairs,
        pagination::{self, PageRequest},
    },
};

use super::{AuditEvent, AuditFilter, AuditLog};

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
        ("event" = Option<String>, Query, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$", description = "Only events of this kind, such as login.failed"),
        ("user_id" = Option<uuid::Uuid>, Query, description = "Only events about this account or done by it"),
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
    let event = query.text_filter("event", 64, &mut errors);
    let user_id = match query.get("user_id") {
        None => None,
        Some(raw) => match uuid::Uuid::try_parse(raw) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(FieldError::new(
                    InputLocation::Query,
                    "/user_id",
                    "invalid_uuid",
                    "must be a UUID",
                ));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = AuditFilter {
        event: event.map(str::to_owned),
        user_id,
    };
    let (items, more) = audit.page(page.limit, page.after, &filter).await?;
    let last = items.last().map(|e| e.id);
    let user_id = user_id.map(|id| id.to_string());
    let params: Vec<(&str, &str)> = [("event", event), ("user_id", user_id.as_deref())]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect();
    let (next_cursor, headers) =
        pagination::next_page("/admin/audit-events", &params, page.limit, last, more);
    Ok((headers, Json(AuditPage { items, next_cursor })).into_response())
}
