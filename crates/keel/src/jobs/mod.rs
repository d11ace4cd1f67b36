//! Background jobs: one API, two queues.
//!
//! Every job is a row of the `jobs` table, written by [`Jobs::enqueue`] or, inside the
//! transaction of the write that needs it, by [`Jobs::enqueue_in`] (a transactional outbox:
//! the job exists if and only if the write committed). Workers ([`worker`]) take jobs
//! either from that table (the embedded default; `FOR UPDATE SKIP LOCKED` on PostgreSQL)
//! or, when `AMQP_URL` is set, from RabbitMQ ([`amqp`]), to which a relay publishes the
//! table's new rows once the broker confirms them.
//!
//! Delivery is at least once: a job whose worker dies runs again when its lease expires,
//! so handlers must be idempotent. A running job is always held by one lease (a fresh id
//! per attempt), and every state change after the claim is guarded by it, so two workers
//! never run the same job at the same time and a late worker cannot overwrite a newer
//! attempt's outcome.

pub mod amqp;
mod gauges;
mod routes;
pub mod store;
pub mod worker;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    config::Config,
    db::{Db, DbError, Tx},
    error::ApiError,
    metrics::Metrics,
};

pub use routes::router;
pub use store::{JobPage, JobQuery, QueueStats};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its `run_at` and a worker.
    Queued,
    /// Held by a worker.
    Running,
    /// Done.
    Succeeded,
    /// Out of attempts; `last_error` says why. `POST /jobs/{id}/retry` queues it again.
    Dead,
    /// Cancelled by an admin while it was queued (`POST /jobs/{id}/cancel`); it never runs.
    Cancelled,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// Reads a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "succeeded" => Some(Self::Succeeded),
            "dead" => Some(Self::Dead),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// A stored job, as the admin API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    /// Time-ordered UUIDv7.
    pub id: Uuid,
    /// Which handler runs it, such as `email.welcome`.
    #[schema(example = "email.welcome")]
    pub kind: String,
    /// The handler's input.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Where it is in its life.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: i32,
    /// Attempts it gets before it is dead.
    pub max_attempts: i32,
    /// When it is (or was) due.
    pub run_at: DateTime<Utc>,
    /// The key it was enqueued with: a second enqueue with the same key is the same job.
    pub idempotency_key: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it succeeded, died or was cancelled.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    kind: String,
    payload: Value,
    delay: Duration,
    idempotency_key: Option<String>,
}

impl NewJob {
    /// A job for the handler of `kind`, due now.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            delay: Duration::ZERO,
            idempotency_key: None,
        }
    }

    /// Due `delay` from now.
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Enqueued at most once for `key`: a later enqueue with the same key answers the
    /// job of the first.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// What a handler gets.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job.
    pub id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its input.
    pub payload: Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// Attempts it gets: when `attempt` reaches it, a failure is final.
    pub max_attempts: i32,
}

/// A job handler: an async function of the job that fails with a message worth keeping.
pub type Handler = Arc<dyn Fn(JobContext) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// The handlers of every job kind a worker runs.
#[derive(Clone, Default)]
pub struct Handlers(HashMap<String, Handler>);

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Handlers {
    /// Runs jobs of `kind` with `handler`.
    pub fn register<F, Fut>(&mut self, kind: impl Into<String>, handler: F)
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.0
            .insert(kind.into(), Arc::new(move |job| Box::pin(handler(job))));
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: &str) -> Option<&Handler> {
        self.0.get(kind)
    }
}

/// Why a job could not be enqueued or changed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The payload cannot be stored.
    #[error("cannot encode the job payload: {0}")]
    Payload(#[from] serde_json::Error),
}

impl From<JobError> for ApiError {
    #[track_caller]
    fn from(error: JobError) -> Self {
        match error {
            JobError::Database(e) => e.into(),
            JobError::Payload(_) => Self::internal(error),
        }
    }
}

/// Which queue carries the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The `jobs` table of keel's database.
    Database,
    /// RabbitMQ, fed from the `jobs` table by the outbox relay.
    RabbitMq,
}

/// The job queue: enqueueing, the admin API's reads, and the local wake-up of workers.
#[derive(Debug, Clone)]
pub struct Jobs {
    store: store::JobStore,
    backend: Backend,
    max_attempts: i32,
    /// Wakes this process's workers (embedded) or relay (RabbitMQ) after an enqueue, so a
    /// job does not wait for the next poll.
    wake: Arc<Notify>,
    /// Whether this process's RabbitMQ connection is up (`None` on the embedded queue, or
    /// when this process runs no workers).
    broker: Arc<Mutex<Option<bool>>>,
    /// Where this process's workers count finished attempts.
    metrics: Option<Arc<Metrics>>,
}

impl Jobs {
    /// The queue configured by `config`, on `db`.
    pub fn new(config: &Config, db: Db) -> Self {
        let backend = if config.amqp_url.is_some() {
            Backend::RabbitMq
        } else {
            Backend::Database
        };
        Self {
            store: store::JobStore::new(db),
            backend,
            max_attempts: i32::try_from(config.jobs_max_attempts).unwrap_or(i32::MAX),
            wake: Arc::new(Notify::new()),
            broker: Arc::new(Mutex::new(None)),
            metrics: None,
        }
    }

    /// The same queue, its workers counting finished attempts in `metrics`, and its depth
    /// registered there to be read at every scrape (call it once per process).
    #[must_use]
    pub fn with_metrics(self, metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(metrics) = &metrics {
            gauges::register(metrics, self.store.clone());
        }
        Self { metrics, ..self }
    }

    /// Which queue carries the jobs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The storage.
    pub fn store(&self) -> &store::JobStore {
        &self.store
    }

    /// Enqueues `job` in a transaction of its own; with an idempotency key already used,
    /// answers the existing job.
    pub async fn enqueue(&self, job: NewJob) -> Result<Uuid, JobError> {
        let mut tx = self.store.db().begin().await?;
        let id = self.enqueue_in(&mut tx, job).await?;
        tx.commit().await?;
        self.wake();
        Ok(id)
    }

    /// Enqueues `job` inside `tx`: it exists only if `tx` commits. Call [`Jobs::wake`]
    /// after the commit.
    pub async fn enqueue_in(&self, tx: &mut Tx, job: NewJob) -> Result<Uuid, JobError> {
        self.store.insert(tx, job, self.max_attempts).await
    }

    /// Tells this process's workers that jobs are waiting.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    pub(crate) fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Records whether the RabbitMQ connection is up.
    pub(crate) fn set_broker_connected(&self, up: bool) {
        *self.broker.lock().unwrap_or_else(PoisonError::into_inner) = Some(up);
    }

    /// Whether this process's RabbitMQ connection is up; `None` on the embedded queue or
    /// without workers in this process.
    pub fn broker_connected(&self) -> Option<bool> {
        *self.broker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
