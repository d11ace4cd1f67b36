//! Webhooks: endpoints (create, enable or disable, rotate the secret, delete) and their
//! deliveries, with the request sent and the answer received, and replay.

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ConsoleState,
    api::Caller,
    error::ConsoleError,
    form::{FieldErrors, choices, query, summary},
    session::Signed,
    view::{Chrome, html, ok},
};

/// An endpoint as the API shows it.
#[derive(Debug, Deserialize)]
pub struct WebhookView {
    id: Uuid,
    url: String,
    event_types: Vec<String>,
    description: String,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A delivery as the API shows it.
#[derive(Debug, Deserialize)]
pub struct DeliveryView {
    id: Uuid,
    webhook_id: Uuid,
    event_id: i64,
    event_type: String,
    message_id: Uuid,
    replay_of: Option<Uuid>,
    state: String,
    attempts: i32,
    response_status: Option<i32>,
    response_body: Option<String>,
    last_error: Option<String>,
    duration_ms: Option<i64>,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

impl DeliveryView {
    /// The body that was POSTed, indented.
    fn payload_text(&self) -> String {
        serde_json::to_string_pretty(&self.payload).unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// `?cursor=&notice=` (and a delivery `state` filter).
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    state: String,
    notice: Option<String>,
}

#[derive(Template)]
#[template(path = "console/webhooks.html")]
struct ListPage {
    chrome: Chrome,
    webhooks: Vec<WebhookView>,
    next: Option<String>,
}

/// `GET /admin/webhooks`.
pub async fn list(
    State(state): State<ConsoleState>,
    signed: Signed,
    Query(params): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let found: Page<WebhookView> = state
        .api
        .get(
            &signed.caller,
            &format!(
                "/webhooks{}",
                query(&[("limit", "25"), ("cursor", &params.cursor)])
            ),
        )
        .await?
        .into_json()?;
    Ok(ok(&ListPage {
        chrome: Chrome::signed("Webhooks", "/admin/webhooks", &signed.session.csrf)
            .notice(params.notice.as_deref()),
        webhooks: found.items,
        next: found
            .next_cursor
            .map(|cursor| format!("/admin/webhooks{}", query(&[("cursor", &cursor)]))),
    }))
}

/// The new-webhook form.
#[derive(Debug, Default, Deserialize)]
pub struct NewWebhookForm {
    #[serde(default)]
    url: String,
    #[serde(default)]
    event_types: String,
    #[serde(default)]
    description: String,
}

#[derive(Template)]
#[template(path = "console/webhook_new.html")]
struct NewPage {
    chrome: Chrome,
    form: NewWebhookForm,
    errors: FieldErrors,
    error: Option<String>,
}

/// `GET /admin/webhooks/new`.
pub async fn new_form(signed: Signed) -> Response {
    ok(&NewPage {
        chrome: Chrome::signed("New webhook", "/admin/webhooks", &signed.session.csrf),
        form: NewWebhookForm::default(),
        errors: FieldErrors::default(),
        error: None,
    })
}

#[derive(Template)]
#[template(path = "console/webhook_secret.html")]
struct SecretPage {
    chrome: Chrome,
    id: Uuid,
    secret: String,
}

/// A webhook with its secret, as creating or rotating answers.
#[derive(Debug, Deserialize)]
struct WithSecret {
    id: Uuid,
    secret: String,
}

/// `POST /admin/webhooks`: `POST /webhooks`; the secret is shown on this answer only.
pub async fn create(
    State(state): State<ConsoleState>,
    signed: Signed,
    Form(form): Form<NewWebhookForm>,
) -> Result<Response, ConsoleError> {
    let event_types: Vec<&str> = form
        .event_types
        .split([',', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let body = serde_json::json!({
        "url": form.url,
        "event_types": event_types,
        "description": form.description,
    });
    let reply = state
        .api
        .call(&signed.caller, Method::POST, "/webhooks", Some(&body), &[])
        .await?;
    if reply.ok() {
        let created: WithSecret = reply.json()?;
        return Ok(html(
            StatusCode::CREATED,
            &SecretPage {
                chrome: Chrome::signed("Webhook created", "/admin/webhooks", &signed.session.csrf),
                id: created.id,
                secret: created.secret,
            },
        ));
    }
    let status = reply.status;
    let problem = reply.into_problem();
    let errors = FieldErrors::from_problem(&problem);
    let error = Some(if errors.is_empty() {
        summary(&problem)
    } else {
        "Nothing was created: check the fields below.".to_owned()
    });
    Ok(html(
        status,
        &NewPage {
            chrome: Chrome::signed("New webhook", "/admin/webhooks", &signed.session.csrf),
            form,
            errors,
            error,
        },
    ))
}

#[derive(Template)]
#[template(path = "console/webhook.html")]
struct WebhookPage {
    chrome: Chrome,
    webhook: WebhookView,
    deliveries: Vec<DeliveryView>,
    states: Vec<(&'static str, bool)>,
    next: Option<String>,
}

async fn fetch(
    state: &ConsoleState,
    caller: &Caller,
    id: Uuid,
) -> Result<WebhookView, ConsoleError> {
    state
        .api
        .get(caller, &format!("/webhooks/{id}"))
        .await?
        .into_json()
}

/// `GET /admin/webhooks/{id}`: the endpoint and its deliveries.
pub async fn show(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
    Query(params): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let webhook = fetch(&state, &signed.caller, id).await?;
    let deliveries: Page<DeliveryView> = state
        .api
        .get(
            &signed.caller,
            &format!(
                "/webhooks/{id}/deliveries{}",
                query(&[
                    ("limit", "25"),
                    ("state", &params.state),
                    ("cursor", &params.cursor)
                ])
            ),
        )
        .await?
        .into_json()?;
    Ok(ok(&WebhookPage {
        chrome: Chrome::signed(
            format!("Webhook {}", webhook.url),
            "/admin/webhooks",
            &signed.session.csrf,
        )
        .notice(params.notice.as_deref()),
        next: deliveries.next_cursor.map(|cursor| {
            format!(
                "/admin/webhooks/{id}{}",
                query(&[("state", &params.state), ("cursor", &cursor)])
            )
        }),
        webhook,
        deliveries: deliveries.items,
        states: choices(["pending", "succeeded", "failed"], &params.state),
    }))
}

/// The enable/disable form.
#[derive(Debug, Deserialize)]
pub struct SwitchForm {
    active: bool,
}

/// `POST /admin/webhooks/{id}`: `PATCH /webhooks/{id}` with `active`.
pub async fn switch(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
    Form(form): Form<SwitchForm>,
) -> Result<Response, ConsoleError> {
    state
        .api
        .call_ok(
            &signed.caller,
            Method::PATCH,
            &format!("/webhooks/{id}"),
            Some(&serde_json::json!({ "active": form.active })),
            &[],
        )
        .await?;
    let notice = if form.active { "enabled" } else { "disabled" };
    Ok(Redirect::to(&format!("/admin/webhooks/{id}?notice={notice}")).into_response())
}

/// `POST /admin/webhooks/{id}/rotate`: a new signing secret, shown once.
pub async fn rotate(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let reply = state
        .api
        .call(
            &signed.caller,
            Method::POST,
            &format!("/webhooks/{id}/rotate-secret"),
            None,
            &[],
        )
        .await?;
    let rotated: WithSecret = reply.into_json()?;
    Ok(ok(&SecretPage {
        chrome: Chrome::signed(
            "New signing secret",
            "/admin/webhooks",
            &signed.session.csrf,
        ),
        id: rotated.id,
        secret: rotated.secret,
    }))
}

#[derive(Template)]
#[template(path = "console/webhook_delete.html")]
struct DeletePage {
    chrome: Chrome,
    webhook: WebhookView,
}

/// `GET /admin/webhooks/{id}/delete`: asks for confirmation.
pub async fn confirm_delete(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    let webhook = fetch(&state, &signed.caller, id).await?;
    Ok(ok(&DeletePage {
        chrome: Chrome::signed(
            "Delete this webhook?",
            "/admin/webhooks",
            &signed.session.csrf,
        ),
        webhook,
    }))
}

/// `POST /admin/webhooks/{id}/delete`: `DELETE /webhooks/{id}`.
pub async fn delete(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path(id): Path<Uuid>,
) -> Result<Response, ConsoleError> {
    state
        .api
        .act(&signed.caller, Method::DELETE, &format!("/webhooks/{id}"))
        .await?;
    Ok(Redirect::to("/admin/webhooks?notice=deleted").into_response())
}

#[derive(Template)]
#[template(path = "console/delivery.html")]
struct DeliveryPage {
    chrome: Chrome,
    webhook: WebhookView,
    delivery: DeliveryView,
}

/// `?notice=`.
#[derive(Debug, Deserialize)]
pub struct Notice {
    notice: Option<String>,
}

/// `GET /admin/webhooks/{id}/deliveries/{delivery_id}`.
pub async fn delivery(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path((id, delivery_id)): Path<(Uuid, Uuid)>,
    Query(notice): Query<Notice>,
) -> Result<Response, ConsoleError> {
    let webhook = fetch(&state, &signed.caller, id).await?;
    let delivery: DeliveryView = state
        .api
        .get(
            &signed.caller,
            &format!("/webhooks/{id}/deliveries/{delivery_id}"),
        )
        .await?
        .into_json()?;
    Ok(ok(&DeliveryPage {
        chrome: Chrome::signed(
            format!("Delivery of {}", delivery.event_type),
            "/admin/webhooks",
            &signed.session.csrf,
        )
        .notice(notice.notice.as_deref()),
        webhook,
        delivery,
    }))
}

/// `POST /admin/webhooks/{id}/deliveries/{delivery_id}/replay`: the new delivery's page.
pub async fn replay(
    State(state): State<ConsoleState>,
    signed: Signed,
    Path((id, delivery_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ConsoleError> {
    let replayed: DeliveryView = state
        .api
        .call(
            &signed.caller,
            Method::POST,
            &format!("/webhooks/{id}/deliveries/{delivery_id}/replay"),
            None,
            &[],
        )
        .await?
        .into_json()?;
    Ok(Redirect::to(&format!(
        "/admin/webhooks/{}/deliveries/{}?notice=replayed",
        replayed.webhook_id, replayed.id
    ))
    .into_response())
}
