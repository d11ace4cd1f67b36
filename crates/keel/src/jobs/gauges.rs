//! The queue's gauges, read when Prometheus scrapes.

use std::sync::{Arc, atomic::AtomicU64};

use futures_util::future::BoxFuture;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};

use crate::metrics::{Collect, Metrics};

use super::store::JobStore;

/// `state` of a job: `queued`, `running`, `dead` or `cancelled`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The queue's gauges and the store they are read from.
struct QueueGauges {
    store: JobStore,
    jobs: Family<StateLabel, Gauge>,
    oldest: Gauge<f64, AtomicU64>,
}

impl Collect for QueueGauges {
    fn collect(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.store.stats().await {
                Ok(stats) => {
                    for (state, count) in [
                        ("queued", stats.depth),
                        ("running", stats.running),
                        ("dead", stats.dead),
                        ("cancelled", stats.cancelled),
                    ] {
                        self.jobs.get_or_create(&StateLabel { state }).set(count);
                    }
                    let age = stats
                        .oldest_age
                        .and_then(|age| age.to_std().ok())
                        .map_or(0.0, |age| age.as_secs_f64());
                    self.oldest.set(age);
                }
                Err(error) => tracing::warn!(%error, "cannot read the job queue for /metrics"),
            }
        })
    }
}

/// Registers the queue's gauges with `metrics`, read from `store` at every scrape.
pub fn register(metrics: &Metrics, store: JobStore) {
    let gauges = QueueGauges {
        store,
        jobs: Family::default(),
        oldest: Gauge::default(),
    };
    metrics.register(
        "keel_jobs",
        "Jobs by state: queued (due, waiting for a worker), running, dead, cancelled",
        gauges.jobs.clone(),
    );
    metrics.register(
        "keel_jobs_oldest_queued_age_seconds",
        "How long the oldest due job has waited for a worker (0 when none waits)",
        gauges.oldest.clone(),
    );
    metrics.on_scrape(Arc::new(gauges));
}
