//! Prometheus metrics, served as `GET /metrics` (text format 0.0.4) on a listener of their
//! own when `KEEL_METRICS_ADDR` is set, and not at all otherwise.
//!
//! Every keel process has its own [`Metrics`] (an explicit registry, no global state), which
//! the features that count reach as an `Option<Arc<Metrics>>`: without metrics, recording is
//! one `None` check. Counters and histograms are updated as things happen. What is read
//! when Prometheus scrapes (the database pool, the job queue) is registered by its owner:
//! families with [`Metrics::register`] and a [`Collect`] that refreshes them with
//! [`Metrics::on_scrape`], so this module knows no feature. Labels take a bounded set of
//! values: route templates (never paths), status classes, job kinds that have a handler.

mod http;
pub mod recent;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use anyhow::Context;
use axum::{Router, extract::State, response::IntoResponse, routing::get};
use futures_util::future::BoxFuture;
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};
use tokio::{net::TcpListener, sync::oneshot};

use crate::config::Config;

pub use http::{MetricsLayer, NestedRoute};

/// Upper bounds of the request-duration buckets, in seconds.
const REQUEST_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds of the query-duration buckets, in seconds.
const QUERY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A family of histograms that all have `buckets`.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// `method`, `route` and `status_class` of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status_class: &'static str,
}

/// `kind` and `outcome` of a finished job attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    outcome: &'static str,
}

/// One label, `transport`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

/// `cache` and `result` of a cache lookup.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

/// One label, `policy`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: &'static str,
}

/// What the build is.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Refreshes gauges of its owner's when Prometheus scrapes (the pool's size, the queue's
/// depth), before the families are encoded.
pub trait Collect: Send + Sync {
    /// Reads the current state into the gauges registered with it.
    fn collect(&self) -> BoxFuture<'_, ()>;
}

/// The metrics of one keel process.
pub struct Metrics {
    registry: Mutex<Registry>,
    collectors: Mutex<Vec<Arc<dyn Collect>>>,
    requests: Histograms<RequestLabels>,
    active_requests: Gauge,
    queries: Histogram,
    jobs_finished: Family<JobLabels, Counter>,
    streams: Family<TransportLabel, Gauge>,
    slow_consumers: Family<TransportLabel, Counter>,
    cache_requests: Family<CacheLabels, Counter>,
    rate_limited: Family<PolicyLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family, registered and empty.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests: Histograms<RequestLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "http_server_request_duration_seconds",
            "Time from a request's arrival to its response's head, by method, route template and status class",
            requests.clone(),
        );
        let active_requests = Gauge::default();
        registry.register(
            "http_server_active_requests",
            "Requests being handled",
            active_requests.clone(),
        );
        let queries = Histogram::new(QUERY_BUCKETS);
        registry.register(
            "keel_db_query_duration_seconds",
            "Time a database statement took, waiting for a connection included (BEGIN and COMMIT are statements)",
            queries.clone(),
        );
        let jobs_finished = Family::<JobLabels, Counter>::default();
        registry.register(
            "keel_jobs_finished",
            "Job attempts this process finished, by kind and outcome (succeeded, failed and to be retried, dead)",
            jobs_finished.clone(),
        );
        let streams = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "keel_events_connections",
            "Open event streams, by transport",
            streams.clone(),
        );
        let slow_consumers = Family::<TransportLabel, Counter>::default();
        registry.register(
            "keel_events_slow_consumers_dropped",
            "Event streams closed because the client fell too far behind",
            slow_consumers.clone(),
        );
        let cache_requests = Family::<CacheLabels, Counter>::default();
        registry.register(
            "keel_cache_requests",
            "Cache lookups, by cache and result (hit or miss)",
            cache_requests.clone(),
        );
        let rate_limited = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "keel_rate_limit_rejections",
            "Requests refused by a rate limit, by policy (general, auth, account)",
            rate_limited.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("keel_build_info", "keel's version; always 1", build);
        let metrics = Self {
            registry: Mutex::new(registry),
            collectors: Mutex::new(Vec::new()),
            requests,
            active_requests,
            queries,
            jobs_finished,
            streams,
            slow_consumers,
            cache_requests,
            rate_limited,
        };
        metrics.zero_known_series();
        metrics
    }

    /// Creates the series whose label values are known in advance, so that they read 0
    /// (rather than being absent) until something happens.
    fn zero_known_series(&self) {
        for transport in [Transport::Sse, Transport::WebSocket] {
            let label = TransportLabel {
                transport: transport.label(),
            };
            self.streams.get_or_create(&label).set(0);
            self.slow_consumers.get_or_create(&label).inc_by(0);
        }
        for result in ["hit", "miss"] {
            self.cache_requests
                .get_or_create(&CacheLabels {
                    cache: "users",
                    result,
                })
                .inc_by(0);
        }
    }

    /// Adds a family that its owner keeps up to date (with a [`Collect`] when it is read at
    /// scrape time).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// Runs `collector` before every scrape is encoded.
    pub fn on_scrape(&self, collector: Arc<dyn Collect>) {
        self.collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(collector);
    }

    /// Counts one attempt of a job of `kind` (one that has a handler) that ended with
    /// `outcome`.
    pub fn job_finished(&self, kind: &str, outcome: JobOutcome) {
        self.jobs_finished
            .get_or_create(&JobLabels {
                kind: kind.to_owned(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts one lookup of the users cache.
    pub fn users_cache_lookup(&self, hit: bool) {
        self.cache_requests
            .get_or_create(&CacheLabels {
                cache: "users",
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    /// Counts one request refused by the rate-limit `policy` (a fixed name).
    pub fn rate_limited(&self, policy: &'static str) {
        self.rate_limited
            .get_or_create(&PolicyLabel { policy })
            .inc();
    }

    /// Runs the collectors, then renders every family.
    pub async fn render(&self) -> String {
        let collectors = self
            .collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for collector in collectors {
            collector.collect().await;
        }
        self.encode()
    }

    /// Every family in the text format.
    fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = prometheus_text::encode(&mut text, &registry) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        text
    }
}

/// A count as a gauge value.
pub fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// How a job attempt ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// The handler succeeded.
    Succeeded,
    /// It failed and will be retried.
    Failed,
    /// It failed for the last time.
    Dead,
}

impl JobOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

/// How an event stream reaches its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET /events`.
    Sse,
    /// `GET /events/ws`.
    WebSocket,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::WebSocket => "websocket",
        }
    }
}

/// Counts an event stream as open for as long as it lives.
#[derive(Debug)]
pub struct OpenStream {
    metrics: Option<Arc<Metrics>>,
    transport: TransportLabel,
}

impl OpenStream {
    /// A stream over `transport`, open from now on.
    pub fn new(metrics: Option<Arc<Metrics>>, transport: Transport) -> Self {
        let transport = TransportLabel {
            transport: transport.label(),
        };
        if let Some(metrics) = &metrics {
            metrics.streams.get_or_create(&transport).inc();
        }
        Self { metrics, transport }
    }

    /// Counts the stream as closed for falling behind.
    pub fn dropped_as_slow(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.slow_consumers.get_or_create(&self.transport).inc();
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if let Some(metrics) = &self.metrics {
            metrics.streams.get_or_create(&self.transport).dec();
        }
    }
}

/// Times database statements into `keel_db_query_duration_seconds`; the default times
/// nothing.
#[derive(Debug, Clone, Default)]
pub struct QueryTimer(Option<Histogram>);

impl QueryTimer {
    /// A timer into `metrics`, or one that times nothing.
    pub fn of(metrics: Option<&Metrics>) -> Self {
        Self(metrics.map(|metrics| metrics.queries.clone()))
    }

    /// Runs `statement`, timing it when metrics are on.
    pub async fn time<F: Future>(&self, statement: F) -> F::Output {
        let Some(histogram) = &self.0 else {
            return statement.await;
        };
        let started = Instant::now();
        let output = statement.await;
        histogram.observe(started.elapsed().as_secs_f64());
        output
    }
}

/// What a scrape reads.
#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
}

async fn scrape(State(scrape): State<Scrape>) -> impl IntoResponse {
    let text = scrape.metrics.render().await;
    (
        [(::http::header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    )
}

/// The metrics listener and the metrics it serves: bound at start-up, serving
/// `GET /metrics` (and nothing else) once running.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    metrics: Arc<Metrics>,
}

impl MetricsListener {
    /// Fresh metrics and their listener on `KEEL_METRICS_ADDR`; `None` when it is unset.
    pub async fn bind(config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(addr) = config.metrics_addr else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr} (KEEL_METRICS_ADDR)"))?;
        Ok(Some(Self {
            listener,
            metrics: Arc::new(Metrics::new()),
        }))
    }

    /// The metrics served.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves the metrics, running the collectors at each scrape, until
    /// [`MetricsServer::stop`].
    pub fn serve(self) -> MetricsServer {
        let (stop, stopped) = oneshot::channel::<()>();
        let router = Router::new()
            .route("/metrics", get(scrape))
            .with_state(Scrape {
                metrics: self.metrics,
            });
        let listener = self.listener;
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::warn!(%error, "the metrics listener failed");
            }
        });
        MetricsServer { stop, task }
    }
}

/// A running metrics listener.
#[derive(Debug)]
pub struct MetricsServer {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Closes the listener and returns once the scrapes in progress are answered.
    pub async fn stop(self) {
        drop(self.stop);
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "the metrics listener failed");
        }
    }
}
