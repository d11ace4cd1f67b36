//! Liveness and readiness probes for orchestrators and load balancers.

use std::time::Duration;

use axum::{
    Json,
    extract::{FromRef, State},
    response::IntoResponse,
    response::Response,
};
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    db::Db,
    error::{ApiError, Problem},
    jobs::{Backend, Jobs, QueueStats},
    shutdown::Shutdown,
    users::cache::UserCache,
};

/// Time each readiness check gets.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness checks.
#[derive(Clone)]
pub struct HealthState {
    /// The database: reachable and migrated.
    pub db: Db,
    /// The queue, whose depth the answer tells.
    pub jobs: Jobs,
    /// The users cache, whose backend (Redis) is checked.
    pub cache: UserCache,
    /// Not ready once shutdown has begun.
    pub shutdown: Shutdown,
}

/// The health routes.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    HealthState: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(livez))
        .routes(routes!(readyz))
}

/// Liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Is the process up? Answers without touching any dependency.
#[utoipa::path(get, path = "/livez", tag = "health",
    responses((status = 200, description = "The process is up", body = Live)))]
async fn livez() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// One readiness check.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// Name of the dependency checked.
    #[schema(example = "database")]
    pub name: &'static str,
    /// `ok` or `failing`.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Why it fails, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Each check.
    pub checks: Vec<Check>,
    /// The job queue (for monitoring: a deep queue or a lost broker does not make the
    /// instance unready, since jobs wait safely in the database).
    pub jobs: JobsDetail,
    /// The users cache (informational: without it reads go to the database).
    pub cache: CacheDetail,
}

/// The users cache's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct CacheDetail {
    /// `memory` (this process) or `redis` (shared by every instance).
    #[schema(example = "redis")]
    pub backend: &'static str,
    /// `ok`, or `down` while Redis cannot be reached (reads then go to the database).
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Why it is down, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The job queue's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobsDetail {
    /// Which queue carries the jobs.
    pub backend: Backend,
    /// Whether this instance's RabbitMQ connection is up; absent on the database queue or
    /// when this instance runs no workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_connected: Option<bool>,
    /// Jobs due and waiting for a worker.
    pub depth: i64,
    /// How long the oldest of them has waited, in seconds (absent when none waits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_age_secs: Option<f64>,
    /// Jobs running.
    pub running: i64,
    /// Jobs out of attempts, waiting for `POST /jobs/{id}/retry`.
    pub dead: i64,
}

/// Can this instance take traffic? Checks the database is reachable and migrated;
/// answers 503 as soon as shutdown begins, so a load balancer drains it first. The
/// answer also tells the job queue's depth and the age of its oldest waiting job.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready: shutting down, or a dependency is failing (the detail says which)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn readyz(State(state): State<HealthState>) -> Response {
    if state.shutdown.is_draining() {
        return not_ready("shutting down".to_owned());
    }
    let (database, migrations, stats, cache) = tokio::join!(
        check("database", state.db.ping()),
        check("migrations", async {
            match state.db.is_migrated().await {
                Ok(true) => Ok(()),
                Ok(false) => Err("pending migrations; run `keel migrate`".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        }),
        tokio::time::timeout(CHECK_TIMEOUT, state.jobs.store().stats()),
        state.cache.check(),
    );
    let cache = CacheDetail {
        backend: state.cache.backend(),
        status: if matches!(cache, Some(Err(_))) {
            "down"
        } else {
            "ok"
        },
        reason: cache.and_then(Result::err),
    };
    let checks = vec![database, migrations];
    let failing: Vec<String> = checks
        .iter()
        .filter_map(|c| c.reason.as_ref().map(|r| format!("{}: {r}", c.name)))
        .collect();
    if !failing.is_empty() {
        tracing::warn!(reasons = %failing.join("; "), "not ready");
        return not_ready(
            checks
                .iter()
                .filter(|c| c.reason.is_some())
                .map(|c| format!("{} check failing", c.name))
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    let stats = match stats {
        Ok(Ok(stats)) => stats,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the job queue's size");
            QueueStats::default()
        }
        Err(_) => QueueStats::default(),
    };
    Json(Ready {
        status: "ok",
        checks,
        jobs: JobsDetail {
            backend: state.jobs.backend(),
            broker_connected: state.jobs.broker_connected(),
            depth: stats.depth,
            oldest_age_secs: stats
                .oldest_age
                .map(|age| age.num_milliseconds().max(0) as f64 / 1000.0),
            running: stats.running,
            dead: stats.dead,
        },
        cache,
    })
    .into_response()
}

async fn check<E: ToString>(
    name: &'static str,
    probe: impl Future<Output = Result<(), E>>,
) -> Check {
    let reason = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    Check {
        name,
        status: if reason.is_none() { "ok" } else { "failing" },
        reason,
    }
}

fn not_ready(detail: String) -> Response {
    ApiError::Http {
        status: StatusCode::SERVICE_UNAVAILABLE,
        detail,
    }
    .into_response()
}
