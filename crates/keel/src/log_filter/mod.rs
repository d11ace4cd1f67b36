//! `GET`/`PUT /admin/log-filter`: the log filter of this process, read and changed while it
//! runs (admins only). What `RUST_LOG` set at start-up until someone changes it; a restart
//! goes back to `RUST_LOG`.

use std::sync::Arc;

use axum::{Json, extract::FromRef};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{Admin, Auth},
    error::{ApiError, FieldError, InputLocation, Problem},
    http::extract::{FromJson, Invalid, ObjectReader, ValidJson, string},
    telemetry::filter,
};

/// The log filter routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Auth>: FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(get_filter, set_filter))
}

/// The log filter in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogFilter {
    /// `RUST_LOG` syntax: a default level and per-module levels.
    #[schema(example = "info,keel::jobs=debug,sqlx=warn")]
    pub filter: String,
}

/// `PUT /admin/log-filter` body, as documented.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"filter": "info,keel::jobs=debug,sqlx=warn"}))]
#[allow(dead_code)] // Documents the body; requests are parsed by `FromJson`.
pub struct LogFilterRequest {
    #[schema(min_length = 1, max_length = 1000)]
    filter: String,
}

/// A filter someone asked for, checked.
#[derive(Debug)]
struct NewFilter(String);

impl FromJson for NewFilter {
    fn from_json(value: Value) -> Result<Self, Vec<FieldError>> {
        let mut reader = ObjectReader::new(value, &["filter"])?;
        let filter = reader.required("filter", |value| {
            string(value).and_then(|text| {
                if text.trim().is_empty() || text.len() > 1000 {
                    return Err(Invalid::new("length", "must be 1–1000 characters"));
                }
                filter::parse(&text)
                    .map(|_| text)
                    .map_err(|error| Invalid::new("invalid_filter", error))
            })
        });
        reader.finish()?;
        filter.map(Self).ok_or_else(Vec::new)
    }
}

/// The log filter of this instance (admins only).
#[utoipa::path(
    get,
    path = "/admin/log-filter",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The filter in force", body = LogFilter),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "This process does not write logs", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_filter(_admin: Admin) -> Result<Json<LogFilter>, ApiError> {
    let filter = filter::current().ok_or_else(not_logging)?;
    Ok(Json(LogFilter { filter }))
}

/// Change the log filter of this instance until it restarts (admins only).
///
/// Takes `RUST_LOG` syntax (`info,keel::jobs=debug`). Applies to this instance only: behind
/// a load balancer, send it to each one. The change is logged at WARN with the admin's id.
#[utoipa::path(
    put,
    path = "/admin/log-filter",
    tag = "admin",
    security(("bearer" = [])),
    request_body = LogFilterRequest,
    responses(
        (status = 200, description = "The filter now in force", body = LogFilter),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the configured limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid filter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "This process does not write logs", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn set_filter(
    Admin(admin): Admin,
    ValidJson(NewFilter(text)): ValidJson<NewFilter>,
) -> Result<Json<LogFilter>, ApiError> {
    let previous = filter::current().ok_or_else(not_logging)?;
    filter::set(&text).map_err(|error| {
        ApiError::Validation(vec![FieldError::new(
            InputLocation::Body,
            "/filter",
            "invalid_filter",
            error,
        )])
    })?;
    tracing::warn!(admin = %admin.user_id, %previous, filter = %text, "log filter changed");
    Ok(Json(LogFilter { filter: text }))
}

fn not_logging() -> ApiError {
    ApiError::Http {
        status: http::StatusCode::SERVICE_UNAVAILABLE,
        detail: "this process has no log filter to read or change".to_owned(),
    }
}
