//! Workers: run jobs with their handlers, a bounded number at a time, in `keel serve` or
//! `keel worker`.
//!
//! Each attempt runs under a lease that a heartbeat extends; an attempt that fails is
//! queued again after an exponential backoff with jitter, until its attempts are spent
//! and it is dead. On shutdown a worker takes no new job, gives the running ones the
//! configured time to finish, then stops the rest and hands them back uncounted.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use opentelemetry::trace::Status;
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    config::Config,
    metrics::{JobOutcome, Metrics},
    shutdown::Shutdown,
    telemetry::otel,
};

use super::{Backend, Handlers, Jobs, store::Claimed, store::JobStore};

/// Longest error message kept with a job.
const MAX_ERROR_CHARS: usize = 2000;

/// How workers run, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs run at the same time.
    pub concurrency: usize,
    /// Lease length.
    pub lease: Duration,
    /// Time one attempt may take.
    pub timeout: Duration,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Idle poll interval.
    pub poll: Duration,
    /// Time running jobs get to finish on shutdown.
    pub drain: Duration,
}

impl Settings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            concurrency: config.jobs_concurrency,
            lease: Duration::from_secs(config.jobs_lease_secs),
            timeout: Duration::from_secs(config.jobs_timeout_secs),
            retry_base: Duration::from_millis(config.jobs_retry_base_ms),
            retry_max: Duration::from_secs(config.jobs_retry_max_secs),
            poll: Duration::from_millis(config.jobs_poll_ms),
            drain: config.shutdown_timeout(),
        }
    }

    pub(super) fn lease_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(30))
    }

    /// The delay before attempt `attempt + 1`, after attempt `attempt` failed: the
    /// exponential step `base * 2^(attempt-1)` (capped), of which a random half is waited
    /// ("equal jitter"), so that jobs that failed together do not retry together.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(40);
        let step = self
            .retry_base
            .saturating_mul(2u32.saturating_pow(doublings.min(31)))
            .min(self.retry_max);
        let half = step / 2;
        let mut random = [0u8; 8];
        // Without randomness the delay is still bounded; it only loses its spread.
        let _ = getrandom::fill(&mut random);
        let fraction = u64::from_le_bytes(random) as f64 / u64::MAX as f64;
        half + half.mul_f64(fraction)
    }
}

/// What became of an attempt.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The handler succeeded.
    Succeeded,
    /// It failed and has attempts left.
    Retry {
        /// Wait before the next attempt.
        delay: Duration,
        /// Why.
        error: String,
    },
    /// It failed for the last time.
    Dead {
        /// Why.
        error: String,
    },
    /// Another worker holds the job now (this one lost its lease); nothing is recorded.
    Lost,
}

/// The span of one attempt: a consumer span in the trace of the request that enqueued the
/// job (its stored or sent `traceparent`).
fn job_span(claimed: &Claimed) -> Span {
    let job = &claimed.context;
    let span = tracing::info_span!(
        "job",
        id = %job.id,
        kind = %job.kind,
        attempt = job.attempt,
        "otel.kind" = tracing::field::Empty,
        "otel.name" = tracing::field::Empty,
    );
    if otel::enabled() {
        span.record("otel.kind", "consumer");
        span.record("otel.name", format!("process {}", job.kind));
        span.set_attribute("messaging.operation.type", "process");
        span.set_attribute("messaging.message.id", job.id.to_string());
        otel::set_parent_from_traceparent(&span, claimed.traceparent.as_deref());
    }
    span
}

/// Runs attempts: handler, heartbeat, timeout; shared by both queues.
#[derive(Clone)]
pub(super) struct Executor {
    pub(super) store: JobStore,
    handlers: Handlers,
    pub(super) settings: Settings,
    /// Leases of the attempts running in this process, handed back on shutdown.
    leases: Arc<Mutex<HashSet<Uuid>>>,
    metrics: Option<Arc<Metrics>>,
}

impl Executor {
    pub(super) fn new(
        store: JobStore,
        handlers: Handlers,
        settings: Settings,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            store,
            handlers,
            settings,
            leases: Arc::default(),
            metrics,
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the handler of `claimed` while its lease is kept alive, and counts the outcome.
    pub(super) async fn attempt(&self, claimed: &Claimed) -> Outcome {
        let outcome = self.execute(claimed).await;
        let kind = &claimed.context.kind;
        if let Some(metrics) = &self.metrics
            && self.handlers.get(kind).is_some()
        {
            match outcome {
                Outcome::Succeeded => metrics.job_finished(kind, JobOutcome::Succeeded),
                Outcome::Retry { .. } => metrics.job_finished(kind, JobOutcome::Failed),
                Outcome::Dead { .. } => metrics.job_finished(kind, JobOutcome::Dead),
                Outcome::Lost => {}
            }
        }
        outcome
    }

    async fn execute(&self, claimed: &Claimed) -> Outcome {
        let job = &claimed.context;
        self.leases().insert(claimed.lease);
        let span = job_span(claimed);
        let Some(handler) = self.handlers.get(&job.kind) else {
            return span.in_scope(|| {
                self.failed(claimed, format!("no handler for job kind {:?}", job.kind))
            });
        };
        tracing::debug!(parent: &span, "job started");
        // Its own task, so that a panic is a failed attempt and not a dead worker; inside
        // the job's span, so that the handler's own spans and lines belong to the job.
        let mut run = tokio::spawn(handler(job.clone()).instrument(span.clone()));
        let heartbeat = async {
            let every = self.settings.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                match self
                    .store
                    .heartbeat(claimed.lease, self.settings.lease_chrono())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        tracing::warn!(parent: &span, %error, "cannot extend the job's lease")
                    }
                }
            }
        };
        let result = tokio::select! {
            result = tokio::time::timeout(self.settings.timeout, &mut run) => result,
            () = heartbeat => {
                run.abort();
                tracing::warn!(parent: &span, "lease lost to another worker; attempt abandoned");
                return Outcome::Lost;
            }
        };
        let _entered = span.enter();
        match result {
            Ok(Ok(Ok(()))) => {
                tracing::info!("job succeeded");
                Outcome::Succeeded
            }
            Ok(Ok(Err(error))) => self.failed(claimed, format!("{error:#}")),
            Ok(Err(join)) => self.failed(claimed, format!("the handler panicked: {join}")),
            Err(_) => {
                run.abort();
                self.failed(
                    claimed,
                    format!("timed out after {:?}", self.settings.timeout),
                )
            }
        }
    }

    /// The outcome of a failed attempt; called inside the job's span, which it marks failed.
    fn failed(&self, claimed: &Claimed, mut error: String) -> Outcome {
        if otel::enabled() {
            Span::current().set_status(Status::error(error.clone()));
        }
        if let Some((cut, _)) = error.char_indices().nth(MAX_ERROR_CHARS) {
            error.truncate(cut);
        }
        let job = &claimed.context;
        if job.attempt >= claimed.max_attempts {
            tracing::error!(id = %job.id, kind = %job.kind, attempt = job.attempt, %error, "job failed for the last time; dead");
            Outcome::Dead { error }
        } else {
            let delay = self.settings.backoff(job.attempt);
            tracing::warn!(id = %job.id, kind = %job.kind, attempt = job.attempt, %error, retry_in = ?delay, "job failed; will retry");
            Outcome::Retry { delay, error }
        }
    }

    /// Records `outcome` in the table (the embedded queue's way).
    pub(super) async fn record(&self, claimed: &Claimed, outcome: Outcome) {
        let lease = claimed.lease;
        let result = match &outcome {
            Outcome::Succeeded => self.store.succeed(lease).await,
            Outcome::Retry { delay, error } => {
                self.store
                    .retry_later(lease, run_at(*delay), error, false)
                    .await
            }
            Outcome::Dead { error } => self.store.bury(lease, error).await,
            Outcome::Lost => Ok(true),
        };
        self.done(claimed, result);
    }

    /// Forgets the lease of a finished attempt, logging when its outcome was not recorded.
    pub(super) fn done(&self, claimed: &Claimed, recorded: Result<bool, crate::db::DbError>) {
        self.leases().remove(&claimed.lease);
        match recorded {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(id = %claimed.context.id, "the job's lease expired before its outcome was recorded; it will run again")
            }
            Err(error) => {
                tracing::error!(id = %claimed.context.id, %error, "cannot record the job's outcome; it will run again when its lease expires")
            }
        }
    }

    /// Hands back every attempt still running here, uncounted.
    pub(super) async fn release_all(&self) {
        let leases: Vec<Uuid> = self.leases().drain().collect();
        for lease in leases {
            match self.store.release(lease).await {
                Ok(_) => tracing::info!(%lease, "unfinished job handed back"),
                Err(error) => {
                    tracing::warn!(%lease, %error, "cannot hand back an unfinished job; it will run again when its lease expires")
                }
            }
        }
    }

    /// Waits up to the drain time for `tasks`, then stops the rest and hands their jobs back.
    pub(super) async fn drain(&self, tasks: &mut JoinSet<()>) {
        let all_done = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.settings.drain, all_done)
            .await
            .is_err()
        {
            tracing::warn!(
                running = tasks.len(),
                "jobs did not finish within the shutdown timeout; handing them back"
            );
            tasks.shutdown().await;
        }
        self.release_all().await;
    }
}

/// When a job waiting `delay` from now is due.
pub(super) fn run_at(delay: Duration) -> chrono::DateTime<chrono::Utc> {
    let now = crate::db::now();
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(now)
}

/// Runs jobs from the configured queue until `shutdown` begins, then drains.
pub async fn run(jobs: Jobs, handlers: Handlers, config: &Config, shutdown: Shutdown) {
    let settings = Settings::from_config(config);
    let executor = Executor::new(
        jobs.store().clone(),
        handlers,
        settings,
        jobs.metrics.clone(),
    );
    let sweeper = tokio::spawn(sweep(executor.store.clone(), executor.settings.lease));
    match (jobs.backend(), &config.amqp_url) {
        (Backend::RabbitMq, Some(url)) => {
            super::amqp::run(jobs.clone(), executor, url.clone(), config, shutdown).await;
        }
        _ => run_embedded(&jobs, executor, shutdown).await,
    }
    sweeper.abort();
}

/// Queues again, periodically, the jobs whose worker stopped answering.
async fn sweep(store: JobStore, lease: Duration) {
    let mut interval = tokio::time::interval((lease / 2).max(Duration::from_secs(1)));
    loop {
        interval.tick().await;
        match store.recover_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "jobs whose worker stopped answering queued again"),
            Err(error) => tracing::warn!(%error, "cannot recover expired jobs"),
        }
    }
}

/// The embedded queue: claims due rows of the jobs table.
async fn run_embedded(jobs: &Jobs, executor: Executor, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(executor.settings.concurrency));
    let wake = jobs.waker();
    let mut tasks = JoinSet::new();
    tracing::info!(
        concurrency = executor.settings.concurrency,
        "job worker started on the database queue"
    );
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.started() => break,
        };
        // Registered before the claim, so that an enqueue during it is not missed.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match executor
            .store
            .claim_next(executor.settings.lease_chrono())
            .await
        {
            Ok(Some(claimed)) => {
                let executor = executor.clone();
                tasks.spawn(async move {
                    let outcome = executor.attempt(&claimed).await;
                    executor.record(&claimed, outcome).await;
                    drop(permit);
                });
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot claim a job"),
        }
        drop(permit);
        tokio::select! {
            () = tokio::time::sleep(executor.settings.poll) => {}
            () = woken => {}
            () = shutdown.started() => break,
        }
    }
    tracing::info!(running = tasks.len(), "job worker stopping");
    executor.drain(&mut tasks).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_waits_a_random_half_to_all_of_a_doubling_capped_step() {
        let settings = Settings {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            ..Settings::from_config(&Config::default())
        };
        for (attempt, step) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (60, 1000),
        ] {
            let step = Duration::from_millis(step);
            let delays: Vec<Duration> = (0..50).map(|_| settings.backoff(attempt)).collect();
            assert!(
                delays.iter().all(|d| *d >= step / 2 && *d <= step),
                "attempt {attempt}: {delays:?}"
            );
            assert!(
                delays.iter().any(|d| *d != delays[0]),
                "attempt {attempt}: jittered"
            );
        }
    }
}
