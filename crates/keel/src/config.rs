//! Configuration: defaults, then an optional TOML file, then environment variables.
//!
//! Conventional names (`HOST`, `PORT`, `DATABASE_URL`, `LOG_FORMAT`) are read as they are;
//! every setting can also be given as `KEEL_<NAME>` (for example `KEEL_BODY_LIMIT`).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Environment variables read without the `KEEL_` prefix.
const CONVENTIONAL_ENV: [&str; 7] = [
    "host",
    "port",
    "database_url",
    "log_format",
    "amqp_url",
    "smtp_url",
    "redis_url",
];

/// `KEEL_*` variables that are not settings of the server (the CLI and the test suite read them).
const NOT_SETTINGS: [&str; 3] = ["config", "require_services", "test_database_url"];

/// Where keel runs: production refuses to start on generated keys or placeholder secrets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// A developer's machine: missing keys are generated under `data_dir`.
    #[default]
    Development,
    /// A deployment: every secret must be configured, none may be a placeholder.
    Production,
}

/// Output format of the log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Everything keel can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    pub port: u16,
    /// Address of a second listener that serves Prometheus metrics at `/metrics` (and
    /// nothing else), such as `127.0.0.1:9464`; unset, no metrics are served or kept.
    pub metrics_addr: Option<SocketAddr>,
    /// `sqlite://...` or `postgres://...`; defaults to a SQLite file under `data_dir`.
    #[serde(skip_serializing)]
    pub database_url: Option<SecretString>,
    /// Directory for the embedded database and other local state.
    pub data_dir: PathBuf,
    /// Directory whose files are served under `/static/`.
    pub static_dir: PathBuf,
    /// Maximum connections in the database pool.
    pub database_max_connections: u32,
    /// Log line format.
    pub log_format: LogFormat,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Time a request may take before it is answered with 408, in seconds.
    pub request_timeout_secs: u64,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT, in seconds.
    pub shutdown_timeout_secs: u64,
    /// Time to keep serving after SIGTERM with `/readyz` failing (and every response
    /// closing its connection), so a load balancer stops sending requests before the
    /// listener closes, in seconds. Behind nginx, make it longer than the upstream
    /// `keepalive_timeout`.
    pub shutdown_drain_secs: u64,
    /// How long an `Idempotency-Key` is remembered, in seconds.
    pub idempotency_ttl_secs: u64,
    /// Threads of the CPU pool for compute endpoints (0: one per core).
    pub compute_threads: usize,
    /// Compute jobs that may wait for a thread before new ones get 503.
    pub compute_queue: usize,
    /// Origins allowed by CORS (a list, or one comma-separated string); empty means CORS is off.
    #[serde(deserialize_with = "list_or_csv")]
    pub cors_allowed_origins: Vec<String>,
    /// `development` (the default) or `production`.
    pub environment: Environment,
    /// PEM file with the Ed25519 private key (PKCS#8) that signs access tokens; generated
    /// under `data_dir` when unset (development only).
    pub jwt_private_key_file: Option<PathBuf>,
    /// PEM files with keys of earlier rotations (public or private): tokens they signed are
    /// still accepted, and their public parts stay in the JWKS.
    #[serde(deserialize_with = "paths_or_csv")]
    pub jwt_previous_key_files: Vec<PathBuf>,
    /// `iss` of the tokens keel issues and accepts.
    pub jwt_issuer: String,
    /// `aud` of the tokens keel issues and accepts.
    pub jwt_audience: String,
    /// Lifetime of an access token, in seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token (and of the session it belongs to), in seconds.
    pub refresh_token_ttl_secs: u64,
    /// Argon2id memory cost, in KiB (OWASP: 19456 with 2 passes).
    pub password_hash_memory_kib: u32,
    /// Argon2id passes.
    pub password_hash_iterations: u32,
    /// An admin created at start-up when no account has this e-mail yet.
    pub bootstrap_admin_email: Option<String>,
    /// The bootstrap admin's name.
    pub bootstrap_admin_name: String,
    /// The bootstrap admin's password.
    #[serde(skip_serializing)]
    pub bootstrap_admin_password: Option<SecretString>,
    /// Requests per minute one client may make to any route (0: no limit).
    pub rate_limit_per_minute: u32,
    /// Requests per minute one client may make to the routes that take credentials or send
    /// e-mail: login, register, refresh, verify-email, forgot- and reset-password (0: no limit).
    pub auth_rate_limit_per_minute: u32,
    /// Failed logins an account may have within `login_failure_window_secs` before
    /// further attempts are refused (0: no limit).
    pub login_failure_limit: u32,
    /// The window of `login_failure_limit`, in seconds.
    pub login_failure_window_secs: u64,
    /// Addresses or CIDR ranges of proxies whose `X-Forwarded-For` is trusted; empty means
    /// the client is the socket's peer.
    #[serde(deserialize_with = "list_or_csv")]
    pub trusted_proxies: Vec<String>,
    /// `amqp://...` of a RabbitMQ server that carries the jobs; unset, jobs are queued in
    /// keel's database.
    #[serde(skip_serializing)]
    pub amqp_url: Option<SecretString>,
    /// Names of keel's RabbitMQ queues start with this (`<prefix>`, `<prefix>.dead`,
    /// `<prefix>.retry.<ms>`).
    pub amqp_queue_prefix: String,
    /// Whether `keel serve` also runs jobs (`keel worker` always does).
    pub jobs_in_server: bool,
    /// Jobs one process runs at the same time.
    pub jobs_concurrency: usize,
    /// Attempts a job gets before it is dead.
    pub jobs_max_attempts: u32,
    /// How long a claimed job stays with its worker without a heartbeat, in seconds; a job
    /// whose worker died runs again after this.
    pub jobs_lease_secs: u64,
    /// Time one attempt of a job may take, in seconds.
    pub jobs_timeout_secs: u64,
    /// Delay before the first retry, in milliseconds; it doubles with each attempt.
    pub jobs_retry_base_ms: u64,
    /// Longest delay between retries, in seconds.
    pub jobs_retry_max_secs: u64,
    /// How often idle workers look for due jobs, in milliseconds.
    pub jobs_poll_ms: u64,
    /// `smtp://`, `smtps://` (implicit TLS) or `smtp://...?tls=required` (STARTTLS) of the
    /// server that sends mail; unset, each message is written as an `.eml` file under
    /// `<data_dir>/mail/`.
    #[serde(skip_serializing)]
    pub smtp_url: Option<SecretString>,
    /// The `From` of every e-mail.
    pub mail_from: String,
    /// The address users reach keel at, for links in e-mails.
    pub public_url: String,
    /// Lifetime of an e-mail verification token, in seconds.
    pub verify_email_ttl_secs: u64,
    /// Lifetime of a password-reset token, in seconds.
    pub password_reset_ttl_secs: u64,
    /// How long events stay in the log for clients to resume from, in seconds.
    pub events_retention_secs: u64,
    /// Events an instance keeps for streams that are behind; a stream further behind is
    /// closed as a slow consumer (and resumes from the log).
    pub events_buffer: usize,
    /// Seconds between heartbeats on an idle event stream.
    pub events_heartbeat_secs: u64,
    /// How often the event log is read when no notification says it changed, in
    /// milliseconds (SQLite relies on it; PostgreSQL notifies).
    pub events_poll_ms: u64,
    /// Event streams one instance holds at most; more are answered 503.
    pub events_max_connections: usize,
    /// `redis://...` of a Redis server that holds the cache every instance shares; unset,
    /// each instance caches in its own memory.
    #[serde(skip_serializing)]
    pub redis_url: Option<SecretString>,
    /// keel's Redis keys start with this.
    pub redis_key_prefix: String,
    /// How long a cached user is kept, in seconds.
    pub cache_ttl_secs: u64,
    /// Seconds a webhook endpoint has to answer a delivery.
    pub webhooks_timeout_secs: u64,
    /// Whether webhooks may target loopback, private and link-local addresses. Unset:
    /// allowed in development, refused in production (so an admin account cannot be used
    /// to reach internal services).
    pub webhooks_allow_private_networks: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 3000,
            metrics_addr: None,
            database_url: None,
            data_dir: PathBuf::from("data"),
            static_dir: PathBuf::from("static"),
            database_max_connections: 16,
            log_format: LogFormat::Text,
            body_limit: 256 * 1024,
            request_timeout_secs: 30,
            shutdown_timeout_secs: 20,
            shutdown_drain_secs: 0,
            idempotency_ttl_secs: 24 * 60 * 60,
            compute_threads: 0,
            compute_queue: 32,
            cors_allowed_origins: Vec::new(),
            environment: Environment::Development,
            jwt_private_key_file: None,
            jwt_previous_key_files: Vec::new(),
            jwt_issuer: "keel".to_owned(),
            jwt_audience: "keel-api".to_owned(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 60 * 60,
            password_hash_memory_kib: 19 * 1024,
            password_hash_iterations: 2,
            bootstrap_admin_email: None,
            bootstrap_admin_name: "Administrator".to_owned(),
            bootstrap_admin_password: None,
            rate_limit_per_minute: 1200,
            auth_rate_limit_per_minute: 20,
            login_failure_limit: 5,
            login_failure_window_secs: 15 * 60,
            trusted_proxies: Vec::new(),
            amqp_url: None,
            amqp_queue_prefix: "keel.jobs".to_owned(),
            jobs_in_server: true,
            jobs_concurrency: 4,
            jobs_max_attempts: 8,
            jobs_lease_secs: 30,
            jobs_timeout_secs: 60,
            jobs_retry_base_ms: 1000,
            jobs_retry_max_secs: 3600,
            jobs_poll_ms: 500,
            smtp_url: None,
            mail_from: "keel <no-reply@localhost>".to_owned(),
            public_url: "http://127.0.0.1:3000".to_owned(),
            verify_email_ttl_secs: 24 * 60 * 60,
            password_reset_ttl_secs: 60 * 60,
            events_retention_secs: 24 * 60 * 60,
            events_buffer: 4096,
            events_heartbeat_secs: 15,
            events_poll_ms: 100,
            events_max_connections: 20_000,
            redis_url: None,
            redis_key_prefix: "keel:".to_owned(),
            cache_ttl_secs: 300,
            webhooks_timeout_secs: 10,
            webhooks_allow_private_networks: None,
        }
    }
}

/// A configuration that could not be loaded; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` (when given, it must exist), then the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment
            .merge(Env::raw().only(&CONVENTIONAL_ENV))
            .merge(Env::prefixed("KEEL_").ignore(&NOT_SETTINGS));
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting; [`Config::load`] calls it, and so does the server for a
    /// configuration built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name: &str, why: &str| Err(ConfigError(format!("{name}: {why}")));
        if let Some(url) = &self.database_url {
            let url = url.expose_secret();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return bad(
                    "DATABASE_URL",
                    "must start with sqlite:, postgres:// or postgresql://",
                );
            }
        }
        if self.database_max_connections == 0 {
            return bad("KEEL_DATABASE_MAX_CONNECTIONS", "must be at least 1");
        }
        if self.body_limit == 0 {
            return bad("KEEL_BODY_LIMIT", "must be at least 1 byte");
        }
        if self.request_timeout_secs == 0 {
            return bad("KEEL_REQUEST_TIMEOUT_SECS", "must be at least 1");
        }
        if self.idempotency_ttl_secs == 0 {
            return bad("KEEL_IDEMPOTENCY_TTL_SECS", "must be at least 1");
        }
        if self.access_token_ttl_secs == 0 {
            return bad("KEEL_ACCESS_TOKEN_TTL_SECS", "must be at least 1");
        }
        if self.refresh_token_ttl_secs == 0 {
            return bad("KEEL_REFRESH_TOKEN_TTL_SECS", "must be at least 1");
        }
        if self.password_hash_memory_kib < 8 || self.password_hash_iterations == 0 {
            return bad(
                "KEEL_PASSWORD_HASH_MEMORY_KIB / KEEL_PASSWORD_HASH_ITERATIONS",
                "must be at least 8 KiB and 1 pass",
            );
        }
        if self.login_failure_limit > 0 && self.login_failure_window_secs == 0 {
            return bad("KEEL_LOGIN_FAILURE_WINDOW_SECS", "must be at least 1");
        }
        if self
            .metrics_addr
            .is_some_and(|addr| self.port != 0 && addr == SocketAddr::new(self.host, self.port))
        {
            return bad(
                "KEEL_METRICS_ADDR",
                "must differ from HOST:PORT (the API's listener)",
            );
        }
        self.validate_jobs()?;
        self.validate_events()?;
        if self.environment == Environment::Production {
            self.validate_production()?;
        }
        for origin in &self.cors_allowed_origins {
            if http::HeaderValue::from_str(origin).is_err() || !origin.contains("://") {
                return bad(
                    "KEEL_CORS_ALLOWED_ORIGINS",
                    &format!("{origin:?} is not an origin such as https://app.example.com"),
                );
            }
        }
        Ok(())
    }

    /// The job queue's and the mailer's settings.
    fn validate_jobs(&self) -> Result<(), ConfigError> {
        let bad = |name: &str, why: &str| Err(ConfigError(format!("{name}: {why}")));
        if let Some(url) = &self.amqp_url {
            let url = url.expose_secret();
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return bad("AMQP_URL", "must start with amqp:// or amqps://");
            }
        }
        if self.amqp_queue_prefix.is_empty()
            || self.amqp_queue_prefix.len() > 200
            || !self
                .amqp_queue_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(
                "KEEL_AMQP_QUEUE_PREFIX",
                "must be 1-200 letters, digits, '.', '_' or '-'",
            );
        }
        if self.jobs_concurrency == 0 || self.jobs_concurrency > 1000 {
            return bad("KEEL_JOBS_CONCURRENCY", "must be 1-1000");
        }
        if self.jobs_max_attempts == 0 || self.jobs_max_attempts > 100 {
            return bad("KEEL_JOBS_MAX_ATTEMPTS", "must be 1-100");
        }
        if self.jobs_lease_secs < 3 {
            return bad("KEEL_JOBS_LEASE_SECS", "must be at least 3");
        }
        if self.jobs_timeout_secs == 0 {
            return bad("KEEL_JOBS_TIMEOUT_SECS", "must be at least 1");
        }
        if self.jobs_retry_base_ms == 0 || self.jobs_retry_max_secs == 0 {
            return bad(
                "KEEL_JOBS_RETRY_BASE_MS / KEEL_JOBS_RETRY_MAX_SECS",
                "must be at least 1",
            );
        }
        if self.jobs_poll_ms == 0 {
            return bad("KEEL_JOBS_POLL_MS", "must be at least 1");
        }
        if let Some(url) = &self.smtp_url {
            let url = url.expose_secret();
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                return bad("SMTP_URL", "must start with smtp:// or smtps://");
            }
        }
        if self.mail_from.parse::<lettre::message::Mailbox>().is_err() {
            return bad(
                "KEEL_MAIL_FROM",
                "must be an address such as \"keel <no-reply@example.com>\"",
            );
        }
        if url::Url::parse(&self.public_url).is_err() {
            return bad(
                "KEEL_PUBLIC_URL",
                "must be a URL such as https://app.example.com",
            );
        }
        if self.verify_email_ttl_secs == 0 || self.password_reset_ttl_secs == 0 {
            return bad(
                "KEEL_VERIFY_EMAIL_TTL_SECS / KEEL_PASSWORD_RESET_TTL_SECS",
                "must be at least 1",
            );
        }
        Ok(())
    }

    /// The event log's and the streams' settings.
    fn validate_events(&self) -> Result<(), ConfigError> {
        let bad = |name: &str, why: &str| Err(ConfigError(format!("{name}: {why}")));
        if self.events_retention_secs == 0 {
            return bad("KEEL_EVENTS_RETENTION_SECS", "must be at least 1");
        }
        if self.events_buffer == 0 || self.events_buffer > 1_000_000 {
            return bad("KEEL_EVENTS_BUFFER", "must be 1-1000000");
        }
        if self.events_heartbeat_secs == 0 {
            return bad("KEEL_EVENTS_HEARTBEAT_SECS", "must be at least 1");
        }
        if self.events_poll_ms == 0 {
            return bad("KEEL_EVENTS_POLL_MS", "must be at least 1");
        }
        if let Some(url) = &self.redis_url {
            let url = url.expose_secret();
            if !url.starts_with("redis://") {
                return bad("REDIS_URL", "must start with redis://");
            }
        }
        if self.cache_ttl_secs == 0 {
            return bad("KEEL_CACHE_TTL_SECS", "must be at least 1");
        }
        if !(1..=300).contains(&self.webhooks_timeout_secs) {
            return bad("KEEL_WEBHOOKS_TIMEOUT_SECS", "must be 1-300");
        }
        Ok(())
    }

    /// Production refuses secrets that are examples, defaults or placeholders, and a
    /// bootstrap admin password weaker than the password rules.
    fn validate_production(&self) -> Result<(), ConfigError> {
        let placeholder = |name: &str| {
            Err(ConfigError(format!(
                "{name}: holds a placeholder secret; set a real one (KEEL_ENVIRONMENT=production)"
            )))
        };
        if let Some(url) = &self.database_url {
            if url::Url::parse(url.expose_secret())
                .ok()
                .and_then(|url| url.password().map(str::to_owned))
                .is_some_and(|password| is_placeholder(&password))
            {
                return placeholder("DATABASE_URL");
            }
        }
        for (name, url) in [("AMQP_URL", &self.amqp_url), ("SMTP_URL", &self.smtp_url)] {
            if url
                .as_ref()
                .and_then(|url| url::Url::parse(url.expose_secret()).ok())
                .and_then(|url| url.password().map(str::to_owned))
                .is_some_and(|password| is_placeholder(&password))
            {
                return placeholder(name);
            }
        }
        if let Some(password) = &self.bootstrap_admin_password {
            if is_placeholder(password.expose_secret()) {
                return placeholder("KEEL_BOOTSTRAP_ADMIN_PASSWORD");
            }
        }
        Ok(())
    }

    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// Whether webhooks may target private networks: as configured, or only in
    /// development.
    pub fn webhooks_allow_private_networks(&self) -> bool {
        self.webhooks_allow_private_networks
            .unwrap_or(self.environment == Environment::Development)
    }

    /// The shutdown grace period as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// Threads of the CPU pool: as configured, or one per core.
    pub fn compute_threads(&self) -> usize {
        match self.compute_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// The idempotency-key lifetime as a duration.
    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs(self.idempotency_ttl_secs)
    }
}

/// Secrets seen in examples, defaults and templates rather than chosen by someone.
const PLACEHOLDERS: [&str; 16] = [
    "changeme",
    "change-me",
    "change_me",
    "changethis",
    "password",
    "secret",
    "example",
    "placeholder",
    "default",
    "admin",
    "postgres",
    "guest",
    "test",
    "todo",
    "xxx",
    "replace-me",
];

/// Whether `secret` is (or merely wraps) a well-known placeholder, ignoring case, digits and
/// punctuation around it: `changeme`, `Password123!`, `<your-secret>`, `secret`.
fn is_placeholder(secret: &str) -> bool {
    let lower = secret.to_lowercase();
    let core = lower.trim_matches(|c: char| !c.is_ascii_alphabetic());
    core.is_empty()
        || PLACEHOLDERS.contains(&core)
        || core.starts_with("your")
        || core.contains("changeme")
        || core.contains("change-me")
}

/// Turns a figment error into one line that names the setting as the user would write it.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let setting = e
                .path
                .first()
                .map(|key| {
                    if CONVENTIONAL_ENV.contains(&key.as_str()) {
                        key.to_uppercase()
                    } else {
                        format!("KEEL_{}", key.to_uppercase())
                    }
                })
                .unwrap_or_else(|| "configuration".to_owned());
            format!("{setting}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// [`list_or_csv`] for paths.
fn paths_or_csv<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PathBuf>, D::Error> {
    Ok(list_or_csv(deserializer)?
        .into_iter()
        .map(PathBuf::from)
        .collect())
}

/// Accepts `["a", "b"]` (TOML) as well as `a,b` (an environment variable).
fn list_or_csv<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(deserializer)? {
        ListOrCsv::List(list) => list,
        ListOrCsv::Csv(csv) => csv
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production() -> Config {
        Config {
            environment: Environment::Production,
            ..Config::default()
        }
    }

    #[test]
    fn placeholders_are_recognised() {
        for secret in [
            "changeme",
            "Password123!",
            "<your-secret>",
            "postgres",
            "CHANGE_ME",
            "",
            "12345678",
        ] {
            assert!(is_placeholder(secret), "{secret:?}");
        }
        for secret in [
            "p0stgres-9f8e7d",
            "correct horse battery staple",
            "vK3#qL9!zT",
        ] {
            assert!(!is_placeholder(secret), "{secret:?}");
        }
    }

    #[test]
    fn the_metrics_listener_cannot_be_the_api_s() {
        let config = Config {
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 3000))),
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("KEEL_METRICS_ADDR"), "{error}");
        let config = Config {
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            ..Config::default()
        };
        assert!(config.validate().is_ok());
    }

    #[test]
    fn production_refuses_placeholder_secrets_and_names_the_setting() {
        let config = Config {
            database_url: Some("postgres://keel:changeme@db/keel".into()),
            ..production()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("DATABASE_URL"), "{error}");
        assert!(
            !error.contains("changeme"),
            "the secret is not echoed: {error}"
        );

        let config = Config {
            bootstrap_admin_email: Some("root@example.com".into()),
            bootstrap_admin_password: Some("password".into()),
            ..production()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("KEEL_BOOTSTRAP_ADMIN_PASSWORD"), "{error}");

        let config = Config {
            database_url: Some("postgres://keel:p0stgres-9f8e7d@db/keel".into()),
            bootstrap_admin_password: Some("correct horse battery staple".into()),
            ..production()
        };
        assert!(config.validate().is_ok());
        // Development accepts anything.
        let config = Config {
            database_url: Some("postgres://keel:changeme@db/keel".into()),
            ..Config::default()
        };
        assert!(config.validate().is_ok());
    }
}
