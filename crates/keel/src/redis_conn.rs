//! The Redis connection every instance shares state through (the users cache, rate
//! limits), when `REDIS_URL` is set.
//!
//! Redis is never a reason to fail a request: each command gets a short budget, and a
//! caller that gets an error goes on without Redis (from the database, or with this
//! instance's own counts). Whether the last command failed is tracked for `/readyz`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};

/// Longest a Redis command may take before the caller goes on without it.
pub const TIMEOUT: Duration = Duration::from_millis(250);

/// A multiplexed, self-reconnecting connection to Redis.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    prefix: Arc<str>,
    down: Arc<AtomicBool>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// A connection to `url` whose keys start with `prefix`. Connects lazily: keel starts
    /// while Redis is unreachable.
    pub fn connect(url: &SecretString, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose_secret())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        Ok(Self {
            connection: client.get_connection_manager_lazy(config)?,
            prefix: prefix.into(),
            down: Arc::new(AtomicBool::new(false)),
        })
    }

    /// `<prefix><name>`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `command` on the connection within [`TIMEOUT`].
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let result = match tokio::time::timeout(TIMEOUT, command(self.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
        };
        let was_down = self.down.swap(result.is_err(), Ordering::Relaxed);
        match (&result, was_down) {
            (Err(error), false) => {
                tracing::warn!(%error, "Redis is unreachable; going on without it");
            }
            (Ok(_), true) => tracing::info!("Redis is reachable again"),
            _ => {}
        }
        result
    }

    /// Whether Redis answers a PING now.
    /// The client span of one Redis operation (`HMGET`, a script's name…), after
    /// OpenTelemetry's database conventions; disabled unless traces are exported.
    pub fn span(operation: &'static str) -> tracing::Span {
        if !crate::telemetry::otel::enabled() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            "redis",
            "otel.kind" = "client",
            "otel.name" = operation,
            "db.system.name" = "redis",
            "db.operation.name" = operation,
        )
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.run(|mut connection| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .await
        .map(drop)
    }
}
