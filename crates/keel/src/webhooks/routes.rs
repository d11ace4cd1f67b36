//! `/webhooks`: registering endpoints and reading and replaying their deliveries (admins
//! only).

use std::sync::{Arc, LazyLock};

use axum::{
    Json,
    extract::{FromRef, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use regex::Regex;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{Admin, Auth},
    config::Environment,
    error::{ApiError, FieldError, InputLocation, Problem},
    events::{MAX_PATTERNS, Patterns},
    http::{
        extract::{
            FromJson, Invalid, ObjectReader, QueryPairs, UuidPair, UuidParam, ValidJson, string,
        },
        pagination::{self, PageRequest},
    },
};

use super::{
    CreatedWebhook, Delivery, DeliveryState, Webhook, WebhookStore, WebhooksState,
    store::{NewWebhook, StoreError, WebhookChanges},
};

/// The webhook routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    WebhooksState: FromRef<S>,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(get_delivery))
        .routes(routes!(replay_delivery))
        .routes(routes!(rotate_secret))
}

const NOT_FOUND: ApiError = ApiError::NotFound("no webhook with this id");
const NO_DELIVERY: ApiError = ApiError::NotFound("no delivery with this id for this webhook");

/// Longest URL accepted.
const MAX_URL_CHARS: usize = 2000;
/// Longest event type (or pattern) accepted.
const MAX_TYPE_CHARS: usize = 100;
/// Longest description accepted.
const MAX_DESCRIPTION_CHARS: usize = 500;

impl From<StoreError> for ApiError {
    #[track_caller]
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(e) => e.into(),
            StoreError::Job(e) => e.into(),
            StoreError::Random(_) => Self::internal(error),
        }
    }
}

fn store(state: &WebhooksState) -> WebhookStore {
    WebhookStore::new(state.db.clone())
}

/// `POST /webhooks` body, as documented.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://hooks.example.com/keel", "event_types": ["user.*", "job.dead"], "description": "CRM sync"}))]
#[allow(dead_code)] // Documents the body (serde's attributes shape the schema); requests are parsed by `FromJson`.
pub struct CreateWebhookRequest {
    /// An absolute `http` or `https` URL (`https` only in production), at most 2000
    /// characters, without credentials.
    #[schema(
        max_length = 2000,
        pattern = r"^https?://(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?([/?#][\x21-\x7E]*)?$"
    )]
    url: String,
    /// 1–50 event types: exact names such as `user.created`, prefixes such as `user.*`, or
    /// `*` for every event.
    #[schema(min_items = 1, max_items = 50, value_type = Vec<EventTypePattern>)]
    event_types: Vec<String>,
    /// A note for admins, at most 500 characters without control characters.
    #[schema(
        max_length = 500,
        nullable = false,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    description: Option<String>,
    /// Whether events are delivered (default `true`).
    #[schema(nullable = false)]
    active: Option<bool>,
}

/// `PATCH /webhooks/{id}` body, as documented: every field optional.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"active": false}))]
#[allow(dead_code)] // Documents the body (serde's attributes shape the schema); requests are parsed by `FromJson`.
pub struct UpdateWebhookRequest {
    /// An absolute `http` or `https` URL (`https` only in production), at most 2000
    /// characters, without credentials.
    #[schema(
        max_length = 2000,
        nullable = false,
        pattern = r"^https?://(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?([/?#][\x21-\x7E]*)?$"
    )]
    url: Option<String>,
    /// 1–50 event types: exact names, prefixes such as `user.*`, or `*`.
    #[schema(min_items = 1, max_items = 50, nullable = false, value_type = Option<Vec<EventTypePattern>>)]
    event_types: Option<Vec<String>>,
    /// A note for admins, at most 500 characters without control characters.
    #[schema(
        max_length = 500,
        nullable = false,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    description: Option<String>,
    /// Whether events are delivered.
    #[schema(nullable = false)]
    active: Option<bool>,
}

/// An event type, a prefix such as `user.*`, or `*`.
// `docs::complete` adds its `maxLength` of 100, which utoipa cannot put on a newtype.
#[derive(ToSchema)]
#[schema(
    pattern = r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$",
    example = "user.*"
)]
#[allow(dead_code)] // Documents the items of `event_types`.
pub struct EventTypePattern(String);

const CREATE_FIELDS: &[&str] = &["url", "event_types", "description", "active"];

/// The URLs webhooks may be sent to: `http` or `https`, a DNS name whose last label starts
/// with a letter or a dotted-quad IPv4 address, an optional port, then printable ASCII. The
/// OpenAPI document declares the same pattern, so clients can check a URL before sending it.
const URL_PATTERN: &str = r"^https?://(([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?([/?#][\x21-\x7E]*)?$";

static URL_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(URL_PATTERN).ok());

/// A URL webhooks may be sent to, as [`URL_PATTERN`] describes and the URL standard parses.
fn webhook_url(value: Value) -> Result<String, Invalid> {
    let raw = string(value)?;
    if raw.chars().count() > MAX_URL_CHARS {
        return Err(Invalid::new(
            "too_long",
            format!("must be at most {MAX_URL_CHARS} characters"),
        ));
    }
    let matches = URL_RE.as_ref().is_some_and(|re| re.is_match(&raw));
    match url::Url::parse(&raw) {
        Ok(url) if matches => Ok(url.into()),
        _ => Err(Invalid::new(
            "invalid_url",
            "must be an http or https URL with a host name or IPv4 address and no \
             credentials, such as https://hooks.example.com/keel",
        )),
    }
}

fn event_types(value: Value) -> Result<Patterns, Invalid> {
    let Value::Array(items) = value else {
        return Err(Invalid::new("type", "must be an array of event types"));
    };
    if items.is_empty() || items.len() > MAX_PATTERNS {
        return Err(Invalid::new(
            "out_of_range",
            format!("must list 1 to {MAX_PATTERNS} event types"),
        ));
    }
    let names = items
        .into_iter()
        .map(string)
        .collect::<Result<Vec<String>, Invalid>>()?;
    if let Some(long) = names
        .iter()
        .find(|name| name.chars().count() > MAX_TYPE_CHARS)
    {
        return Err(Invalid::new(
            "invalid_event_type",
            format!("{long:?} is longer than {MAX_TYPE_CHARS} characters"),
        ));
    }
    Patterns::parse(names.iter().map(String::as_str))
        .map_err(|detail| Invalid::new("invalid_event_type", detail))
}

fn description(value: Value) -> Result<String, Invalid> {
    let text = string(value)?;
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Invalid::new(
            "too_long",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Invalid::new(
            "control_characters",
            "must not contain control characters",
        ));
    }
    Ok(text)
}

fn boolean(value: Value) -> Result<bool, Invalid> {
    value
        .as_bool()
        .ok_or_else(|| Invalid::new("type", "must be true or false"))
}

impl FromJson for NewWebhook {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, CREATE_FIELDS)?;
        let url = reader.required("url", webhook_url);
        let event_types = reader.required("event_types", event_types);
        let description = reader.optional("description", description);
        let active = reader.optional("active", boolean);
        reader.finish()?;
        match (url, event_types) {
            (Some(url), Some(event_types)) => Ok(Self {
                url,
                event_types,
                description: description.unwrap_or_default(),
                active: active.unwrap_or(true),
            }),
            // finish() has reported why one is missing.
            _ => Err(Vec::new()),
        }
    }
}

impl FromJson for WebhookChanges {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, CREATE_FIELDS)?;
        let url = reader.optional("url", webhook_url);
        let event_types = reader.optional("event_types", event_types);
        let description = reader.optional("description", description);
        let active = reader.optional("active", boolean);
        reader.finish()?;
        Ok(Self {
            url,
            event_types,
            description,
            active,
        })
    }
}

/// Production sends signed events over TLS only.
fn require_tls(state: &WebhooksState, url: Option<&str>) -> Result<(), ApiError> {
    match url {
        Some(url)
            if state.environment == Environment::Production && !url.starts_with("https://") =>
        {
            Err(ApiError::invalid(FieldError::new(
                InputLocation::Body,
                "/url",
                "invalid_url",
                "must be an https URL in production",
            )))
        }
        _ => Ok(()),
    }
}

/// Register an endpoint for event types; its signing secret is in this answer only
/// (admins only).
#[utoipa::path(
    post,
    path = "/webhooks",
    tag = "webhooks",
    security(("bearer" = [])),
    request_body(content = CreateWebhookRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered; events that follow are delivered", body = CreatedWebhook,
            headers(("Location" = String, description = "URL of the new webhook"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input: every failing field is listed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_webhook(
    State(state): State<WebhooksState>,
    _admin: Admin,
    ValidJson(new): ValidJson<NewWebhook>,
) -> Result<Response, ApiError> {
    require_tls(&state, Some(new.url.as_str()))?;
    let created = store(&state).create(new).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/webhooks/{}", created.webhook.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(created)).into_response())
}

/// A page of webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// Webhooks, newest first.
    pub items: Vec<Webhook>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// List webhooks, newest first (admins only).
#[utoipa::path(
    get,
    path = "/webhooks",
    tag = "webhooks",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, pattern = r"^az[E-H][A-Za-z0-9_-]{21}$", description = "The next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of webhooks", body = WebhookList,
            headers(("Link" = String, description = "RFC 8288 link to the next page (rel=\"next\"), when there is one"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameters", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_webhooks(
    State(state): State<WebhooksState>,
    _admin: Admin,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let page = PageRequest::from_query(&query, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (items, more) = store(&state).list(page.limit, page.after).await?;
    let last = items.last().map(|webhook| webhook.id);
    let (next_cursor, headers) = pagination::next_page("/webhooks", &[], page.limit, last, more);
    Ok((headers, Json(WebhookList { items, next_cursor })).into_response())
}

/// One webhook (admins only).
#[utoipa::path(
    get,
    path = "/webhooks/{id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook", body = Webhook),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_webhook(
    State(state): State<WebhooksState>,
    _admin: Admin,
    UuidParam(id): UuidParam,
) -> Result<Json<Webhook>, ApiError> {
    store(&state).get(id).await?.map(Json).ok_or(NOT_FOUND)
}

/// Change a webhook's URL, event types, description or state (admins only).
#[utoipa::path(
    patch,
    path = "/webhooks/{id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook id")),
    request_body(content = UpdateWebhookRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The changed webhook", body = Webhook),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input: every failing field is listed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_webhook(
    State(state): State<WebhooksState>,
    _admin: Admin,
    UuidParam(id): UuidParam,
    ValidJson(changes): ValidJson<WebhookChanges>,
) -> Result<Json<Webhook>, ApiError> {
    require_tls(&state, changes.url.as_deref())?;
    store(&state)
        .update(id, &changes)
        .await?
        .map(Json)
        .ok_or(NOT_FOUND)
}

/// Delete a webhook and its delivery log; pending deliveries are not sent (admins only).
#[utoipa::path(
    delete,
    path = "/webhooks/{id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_webhook(
    State(state): State<WebhooksState>,
    _admin: Admin,
    UuidParam(id): UuidParam,
) -> Result<StatusCode, ApiError> {
    if store(&state).delete(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(NOT_FOUND)
    }
}

/// Give a webhook a new signing secret, returned in this answer only (admins only).
///
/// Every delivery attempt from now on, retries of earlier deliveries included, is signed
/// with the new secret; the old one signs nothing more.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook with its new secret", body = CreatedWebhook),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rotate_secret(
    State(state): State<WebhooksState>,
    _admin: Admin,
    UuidParam(id): UuidParam,
) -> Result<Response, ApiError> {
    let rotated = store(&state).rotate_secret(id).await?.ok_or(NOT_FOUND)?;
    Ok((no_store(), Json(rotated)).into_response())
}

/// Answers that carry a secret must not be cached.
fn no_store() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Deliveries, newest first.
    pub items: Vec<Delivery>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A webhook's delivery log, newest first (admins only).
#[utoipa::path(
    get,
    path = "/webhooks/{id}/deliveries",
    tag = "webhooks",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "Webhook id"),
        ("state" = Option<DeliveryState>, Query, description = "Only deliveries in this state"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, pattern = r"^az[E-H][A-Za-z0-9_-]{21}$", description = "The next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryList,
            headers(("Link" = String, description = "RFC 8288 link to the next page (rel=\"next\"), when there is one"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid id or query parameters", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_deliveries(
    State(state): State<WebhooksState>,
    _admin: Admin,
    UuidParam(id): UuidParam,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let page = PageRequest::from_query(&query, &mut errors);
    let delivery_state = query.state_filter(
        DeliveryState::parse,
        "pending, succeeded, failed",
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let store = store(&state);
    if store.get(id).await?.is_none() {
        return Err(NOT_FOUND);
    }
    let (items, more) = store
        .deliveries(id, delivery_state, page.limit, page.after)
        .await?;
    let last = items.last().map(|delivery| delivery.id);
    let params: Vec<(&str, &str)> = delivery_state
        .map(|s| ("state", s.as_str()))
        .into_iter()
        .collect();
    let (next_cursor, headers) = pagination::next_page(
        &format!("/webhooks/{id}/deliveries"),
        &params,
        page.limit,
        last,
        more,
    );
    Ok((headers, Json(DeliveryList { items, next_cursor })).into_response())
}

/// One delivery, with its body and the last attempt's outcome (admins only).
#[utoipa::path(
    get,
    path = "/webhooks/{id}/deliveries/{delivery_id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "Webhook id"),
        ("delivery_id" = uuid::Uuid, Path, description = "Delivery id"),
    ),
    responses(
        (status = 200, description = "The delivery", body = Delivery),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery for this webhook", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_delivery(
    State(state): State<WebhooksState>,
    _admin: Admin,
    UuidPair(id, delivery_id): UuidPair,
) -> Result<Json<Delivery>, ApiError> {
    store(&state)
        .delivery(id, delivery_id)
        .await?
        .map(Json)
        .ok_or(NO_DELIVERY)
}

/// Send a delivery again, as a new delivery with the same body and `webhook-id` (admins
/// only).
#[utoipa::path(
    post,
    path = "/webhooks/{id}/deliveries/{delivery_id}/replay",
    tag = "webhooks",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "Webhook id"),
        ("delivery_id" = uuid::Uuid, Path, description = "Delivery id"),
    ),
    responses(
        (status = 202, description = "Queued: the new delivery", body = Delivery,
            headers(("Location" = String, description = "URL of the new delivery"))),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery for this webhook", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An id is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replay_delivery(
    State(state): State<WebhooksState>,
    _admin: Admin,
    UuidPair(id, delivery_id): UuidPair,
) -> Result<Response, ApiError> {
    let delivery = store(&state)
        .replay(&state.jobs, id, delivery_id)
        .await?
        .ok_or(NO_DELIVERY)?;
    let mut headers = HeaderMap::new();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/webhooks/{id}/deliveries/{}", delivery.id))
    {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::ACCEPTED, headers, Json(delivery)).into_response())
}
