//! The audit trail, filtered by kind of event and by account.

use askama::Template;
use axum::{
    extract::{Query, State},
    response::Response,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::audit::AuditKind;

use super::{
    ConsoleState,
    error::ConsoleError,
    form::{FieldErrors, choices, listed, query},
    session::Signed,
    view::{Chrome, html, ok},
};

/// An audit event as the API shows it.
#[derive(Debug, Deserialize)]
pub struct EventView {
    at: DateTime<Utc>,
    event: String,
    user_id: Option<Uuid>,
    actor_id: Option<Uuid>,
    ip: Option<String>,
    detail: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AuditPage {
    items: Vec<EventView>,
    next_cursor: Option<String>,
}

/// `?event=&user_id=&cursor=`.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    event: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    cursor: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct Page {
    chrome: Chrome,
    kinds: Vec<(&'static str, bool)>,
    user_id: String,
    events: Vec<EventView>,
    next: Option<String>,
    errors: FieldErrors,
}

/// `GET /admin/audit`: `GET /admin/audit-events` with the filters.
pub async fn page(
    State(state): State<ConsoleState>,
    signed: Signed,
    Query(params): Query<AuditQuery>,
) -> Result<Response, ConsoleError> {
    let reply = state
        .api
        .get(
            &signed.caller,
            &format!(
                "/admin/audit-events{}",
                query(&[
                    ("limit", "50"),
                    ("event", &params.event),
                    ("user_id", params.user_id.trim()),
                    ("cursor", &params.cursor),
                ])
            ),
        )
        .await?;
    let mut page = Page {
        chrome: Chrome::signed("Audit log", "/admin/audit", &signed.session.csrf),
        kinds: choices(
            AuditKind::ALL.iter().map(|kind| kind.as_str()),
            &params.event,
        ),
        user_id: params.user_id.clone(),
        events: Vec::new(),
        next: None,
        errors: FieldErrors::default(),
    };
    let found: AuditPage = match listed(reply, "user_id") {
        Ok(reply) => reply.into_json()?,
        Err((status, errors)) => {
            page.errors = errors;
            return Ok(html(status, &page));
        }
    };
    page.events = found.items;
    page.next = found.next_cursor.map(|cursor| {
        format!(
            "/admin/audit{}",
            query(&[
                ("event", &params.event),
                ("user_id", params.user_id.trim()),
                ("cursor", &cursor)
            ])
        )
    });
    Ok(ok(&page))
}
