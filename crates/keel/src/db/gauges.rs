//! The pool's gauges, read when Prometheus scrapes.

use futures_util::future::BoxFuture;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};

use crate::metrics::{Collect, Metrics, gauge_value};

use super::Db;

/// `state` of a pool connection: `in_use` or `idle`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionState {
    state: &'static str,
}

/// The pool's gauges, read at scrape time.
struct PoolGauges {
    db: Db,
    connections: Family<ConnectionState, Gauge>,
    max: Gauge,
    waiting: Gauge,
}

impl Collect for PoolGauges {
    fn collect(&self) -> BoxFuture<'_, ()> {
        let pool = self.db.pool_status();
        let in_use = pool.open.saturating_sub(pool.idle);
        for (state, count) in [("in_use", in_use), ("idle", pool.idle)] {
            self.connections
                .get_or_create(&ConnectionState { state })
                .set(gauge_value(count));
        }
        self.max.set(gauge_value(pool.max));
        self.waiting.set(gauge_value(pool.waiting));
        Box::pin(std::future::ready(()))
    }
}

impl Db {
    /// Registers the pool's gauges with `metrics`, read at every scrape.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let gauges = PoolGauges {
            db: self.clone(),
            connections: Family::default(),
            max: Gauge::default(),
            waiting: Gauge::default(),
        };
        metrics.register(
            "keel_db_pool_connections",
            "Open database connections, in_use or idle",
            gauges.connections.clone(),
        );
        metrics.register(
            "keel_db_pool_max_connections",
            "Connections the database pool opens at most",
            gauges.max.clone(),
        );
        metrics.register(
            "keel_db_pool_waiting",
            "Tasks waiting for a database connection (PostgreSQL; always 0 on SQLite, whose pool does not say)",
            gauges.waiting.clone(),
        );
        metrics.on_scrape(std::sync::Arc::new(gauges));
    }
}
