//! Test harness: starts a real keel on an ephemeral port, on SQLite (a temporary file) or on
//! PostgreSQL (a fresh database per test), and gives a small HTTP client for it.
//!
//! PostgreSQL is found at `KEEL_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When it is unreachable the PostgreSQL
//! variant of each test prints one line and skips, unless `KEEL_REQUIRE_SERVICES=1`, in
//! which case it fails.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod process;

use std::{net::SocketAddr, path::PathBuf};

use keel::{config::Config, server::Server, shutdown::Shutdown};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

/// The database backends every backend test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The e-mail address of the admin every test server starts with.
pub const ADMIN_EMAIL: &str = "admin@keel.test";
/// That admin's password.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A running keel and clients for it.
pub struct TestApp {
    pub addr: SocketAddr,
    /// Sends the bootstrap admin's access token with every request (a request's own
    /// `Authorization` header takes precedence).
    pub client: reqwest::Client,
    /// Sends no credentials.
    pub anon: reqwest::Client,
    /// The bootstrap admin's access token.
    pub admin_token: String,
    pub backend: Backend,
    pub data_dir: PathBuf,
    /// The database the server uses (a `sqlite:` URL of its file on SQLite).
    pub database_url: String,
    shutdown: Shutdown,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    pg_database: Option<String>,
}

fn admin_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn services_required() -> bool {
    std::env::var("KEEL_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = base.rsplit_once('/').map_or(base, |(head, _)| head);
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Creates an empty PostgreSQL database for one test; `None` (after printing why) when
/// PostgreSQL is unreachable and not required.
pub async fn create_pg_database() -> Option<(String, String)> {
    let admin = admin_url();
    let mut conn = match PgConnection::connect(&admin).await {
        Ok(conn) => conn,
        Err(error) => {
            assert!(
                !services_required(),
                "KEEL_REQUIRE_SERVICES=1 but PostgreSQL is unreachable at {admin}: {error}"
            );
            eprintln!("skipping: PostgreSQL not reachable at {admin} ({error})");
            return None;
        }
    };
    let name = format!("keel_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    Some((name.clone(), with_database(&admin, &name)))
}

/// Drops a database made by [`create_pg_database`].
pub fn drop_pg_database(name: String) {
    // Drop runs outside any async context we can block on, so use a private runtime.
    let admin = admin_url();
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            if let Ok(mut conn) = PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        });
    })
    .join();
}

/// The configuration a test server starts from.
pub fn test_config(data_dir: &std::path::Path) -> Config {
    Config {
        port: 0,
        data_dir: data_dir.to_path_buf(),
        database_max_connections: 5,
        bootstrap_admin_email: Some(ADMIN_EMAIL.to_owned()),
        bootstrap_admin_password: Some(SecretString::from(ADMIN_PASSWORD)),
        // Hashing as in production would make every login of the suite slow; the
        // parameters' effect is tested where it matters.
        password_hash_memory_kib: 1024,
        password_hash_iterations: 1,
        // Tests that are about limits turn them on.
        rate_limit_per_minute: 0,
        auth_rate_limit_per_minute: 0,
        login_failure_limit: 0,
        ..Config::default()
    }
}

/// Starts keel on `backend`; `None` when the backend is unavailable (and not required).
pub async fn spawn(backend: Backend) -> Option<TestApp> {
    spawn_with(backend, |_| {}).await
}

/// Starts keel on `backend` after `adjust` has changed the configuration.
pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = test_config(dir.path());
    let mut pg_database = None;
    if backend == Backend::Postgres {
        let (name, url) = create_pg_database().await?;
        config.database_url = Some(SecretString::from(url));
        pg_database = Some(name);
    }
    adjust(&mut config);
    let database_url = config.database_url.as_ref().map_or_else(
        || format!("sqlite://{}", config.data_dir.join("keel.db").display()),
        |url| url.expose_secret().to_owned(),
    );
    let server = Server::build(config).await.expect("server starts");
    let addr = server.local_addr().expect("bound address");
    let shutdown = server.shutdown_handle();
    let handle = tokio::spawn(server.run());
    let anon = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let admin_token = login(&anon, addr, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let client = bearer_client(&admin_token);
    Some(TestApp {
        addr,
        client,
        anon,
        admin_token,
        backend,
        data_dir: dir.path().to_path_buf(),
        database_url,
        shutdown,
        server: Some(handle),
        _dir: dir,
        pg_database,
    })
}

/// A client (with connections of its own) that sends `token` as a bearer token with every
/// request and follows no redirects.
pub fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .expect("token is a header value"),
    );
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// A loopback port nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

/// Logs in at `addr` and returns the access token; panics unless the answer is 200.
pub async fn login(
    client: &reqwest::Client,
    addr: SocketAddr,
    email: &str,
    password: &str,
) -> String {
    let response = client
        .post(format!("http://{addr}/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login request sent");
    assert_eq!(response.status(), 200, "logging in as {email}");
    let body: Value = response.json().await.expect("token JSON");
    body["access_token"]
        .as_str()
        .expect("access_token is a string")
        .to_owned()
}

impl TestApp {
    /// Absolute URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    pub fn patch_json(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .patch(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// `POST /users`, returning the raw response.
    pub async fn post_user(&self, email: &str, name: &str) -> reqwest::Response {
        self.post_json("/users", &json!({"email": email, "name": name}))
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a user and returns its JSON; panics unless the answer is 201.
    pub async fn create_user(&self, email: &str, name: &str) -> Value {
        let response = self.post_user(email, name).await;
        assert_eq!(response.status(), 201, "creating {email}");
        response.json().await.expect("user JSON")
    }

    /// Begins shutdown and waits for the server to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.begin();
        match self.server.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }

    /// The shutdown handle, to start a shutdown while requests run.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(handle) = self.server.take() {
            handle.abort();
        }
        if let Some(name) = self.pg_database.take() {
            drop_pg_database(name);
        }
    }
}

/// Reads a problem document, checking the media type and the fields every problem has.
pub async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string());
    assert!(!request_id.is_empty());
    assert_eq!(body["request_id"], request_id.as_str());
    body
}

/// Generates a `#[tokio::test]` per backend for each listed `async fn(TestApp)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::common::spawn($crate::common::Backend::Sqlite).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::common::spawn($crate::common::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}

/// The value of header `name` of `response` as a string; panics when it is absent.
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header"))
        .to_str()
        .expect("header is visible ASCII")
        .to_owned()
}

/// Reads a 422 validation problem and returns its errors as sorted
/// `(location, pointer, code)` triples, after checking that each error carries all four
/// members (`location`, `pointer`, `code` and a non-empty `detail`).
pub async fn validation_errors(response: reqwest::Response) -> Vec<(String, String, String)> {
    let body = problem(response, 422).await;
    assert_eq!(body["type"], "/problems/validation", "{body}");
    let errors = body["errors"].as_array().expect("errors is an array");
    assert!(!errors.is_empty(), "a validation problem lists its errors");
    let mut found: Vec<(String, String, String)> = errors
        .iter()
        .map(|error| {
            let text = |key: &str| {
                error[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("error member {key} is a string: {error}"))
                    .to_owned()
            };
            assert!(!text("detail").is_empty(), "detail is not empty: {error}");
            (text("location"), text("pointer"), text("code"))
        })
        .collect();
    found.sort();
    found
}

/// `(location, pointer, code)` triples, sorted, for comparison with [`validation_errors`].
pub fn expected(errors: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut errors: Vec<(String, String, String)> = errors
        .iter()
        .map(|(l, p, c)| ((*l).to_owned(), (*p).to_owned(), (*c).to_owned()))
        .collect();
    errors.sort();
    errors
}

/// The RabbitMQ of the test machine; `None` (after printing why) when it is unreachable
/// and not required.
pub async fn amqp_url() -> Option<String> {
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned();
    match tokio::net::TcpStream::connect("127.0.0.1:5672").await {
        Ok(_) => Some(url),
        Err(error) => {
            assert!(
                !services_required(),
                "KEEL_REQUIRE_SERVICES=1 but RabbitMQ is unreachable at 127.0.0.1:5672: {error}"
            );
            eprintln!("skipping: RabbitMQ not reachable at 127.0.0.1:5672 ({error})");
            None
        }
    }
}

/// The Redis every cache test shares (each with its own key prefix), if it answers.
pub async fn redis_url() -> Option<String> {
    match tokio::net::TcpStream::connect("127.0.0.1:6379").await {
        Ok(_) => Some("redis://127.0.0.1:6379".to_owned()),
        Err(error) => {
            assert!(
                !services_required(),
                "KEEL_REQUIRE_SERVICES=1 but Redis is unreachable at 127.0.0.1:6379: {error}"
            );
            eprintln!("skipping: Redis not reachable at 127.0.0.1:6379 ({error})");
            None
        }
    }
}

/// A Redis key prefix of one test's own.
pub fn redis_prefix() -> String {
    format!("keel-test-{}:", uuid::Uuid::new_v4().simple())
}

/// A second keel on `first`'s database and signing key (as instances behind one load
/// balancer share them), configured by `adjust`.
pub async fn spawn_beside(first: &TestApp, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let url = first.database_url.clone();
    // Where keel generates its development key.
    let key = first.data_dir.join("jwt-ed25519.pem");
    spawn_with(Backend::Sqlite, move |config| {
        config.database_url = Some(SecretString::from(url));
        config.jwt_private_key_file = Some(key);
        adjust(config);
    })
    .await
    .expect("second instance")
}

/// A queue prefix of one test's own.
pub fn queue_prefix() -> String {
    format!("keel.test.{}", uuid::Uuid::new_v4().simple())
}

/// Deletes the work and dead-letter queues under `prefix` (retry queues expire by themselves).
pub async fn delete_queues(url: &str, prefix: &str) {
    let Ok(connection) =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for queue in [prefix.to_owned(), format!("{prefix}.dead")] {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
}

/// A test's PostgreSQL database (made by [`create_pg_database`]), dropped with this value.
pub struct OwnedDatabase(pub Option<String>);

impl Drop for OwnedDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            drop_pg_database(name);
        }
    }
}

/// A test's RabbitMQ queues (under [`queue_prefix`]), deleted with this value.
pub struct OwnedQueues {
    pub url: String,
    pub prefix: String,
}

impl Drop for OwnedQueues {
    fn drop(&mut self) {
        // Drop may run on the test's runtime, which cannot be blocked on: use a private one.
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(delete_queues(&url, &prefix));
        })
        .join();
    }
}

/// What several keel processes of one test share, as a deployment's instances do: a
/// PostgreSQL database, Redis (with a key prefix), RabbitMQ (with a queue prefix) and an
/// SMTP server, each the test's own.
pub struct SharedServices {
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub amqp_url: String,
    pub smtp: SmtpServer,
    /// Deletes the queues under `queues.prefix` when dropped.
    pub queues: OwnedQueues,
    /// Drops the database when dropped.
    pub database: OwnedDatabase,
}

impl SharedServices {
    /// Makes them; `None` (after printing why) when a service is missing and not required.
    pub async fn start() -> Option<Self> {
        let redis_url = redis_url().await?;
        let amqp_url = amqp_url().await?;
        let smtp = SmtpServer::start().await?;
        let (name, database_url) = create_pg_database().await?;
        Some(Self {
            database_url,
            redis_url,
            redis_prefix: redis_prefix(),
            queues: OwnedQueues {
                url: amqp_url.clone(),
                prefix: queue_prefix(),
            },
            amqp_url,
            smtp,
            database: OwnedDatabase(Some(name)),
        })
    }
}

/// Polls `probe` every 50 ms until it answers `Some`, for at most `seconds`.
pub async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {seconds}s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A real SMTP server (aiosmtpd, from PyPI) that keeps what it receives in a maildir.
pub struct SmtpServer {
    pub port: u16,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts one; `None` (after printing why) when aiosmtpd is not installed and services
    /// are not required. `.ci/run` installs it in the project's `.venv`.
    pub async fn start() -> Option<Self> {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (where a test had something else listening before).
    pub async fn start_on(port: u16) -> Option<Self> {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python");
        let python = if std::path::Path::new(venv).exists() {
            venv
        } else {
            "python3"
        };
        let available = std::process::Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|out| out.status.success());
        if !available {
            assert!(
                !services_required(),
                "KEEL_REQUIRE_SERVICES=1 but aiosmtpd is not installed (pip install aiosmtpd)"
            );
            eprintln!("skipping: aiosmtpd is not installed (pip install aiosmtpd)");
            return None;
        }
        let dir = tempfile::tempdir().expect("maildir");
        let child = std::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("maildir"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd starts");
        let server = Self { port, child, dir };
        eventually(20, "aiosmtpd to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        Some(server)
    }

    /// The URL keel sends to.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, raw.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut messages = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.dir.path().join("maildir").join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    messages.push(bytes);
                }
            }
        }
        messages
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A received e-mail, decoded.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub text: String,
    pub html: String,
}

impl Mail {
    /// Parses a raw message (headers, and a multipart/alternative body).
    pub fn parse(raw: &[u8]) -> Self {
        let parsed = mailparse::parse_mail(raw).expect("a well-formed message");
        let header = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.get_key().eq_ignore_ascii_case(name))
                .map(|h| h.get_value())
                .unwrap_or_default()
        };
        let body = |mime: &str| {
            parsed
                .subparts
                .iter()
                .find(|part| part.ctype.mimetype == mime)
                .map(|part| part.get_body().expect("decodable body"))
                .unwrap_or_default()
        };
        Self {
            to: header("To"),
            subject: header("Subject"),
            message_id: header("Message-ID"),
            text: body("text/plain"),
            html: body("text/html"),
        }
    }

    /// The `token` query parameter of the link in the plain-text body.
    pub fn link_token(&self) -> String {
        let start = self
            .text
            .find("token=")
            .expect("the message has a link with a token")
            + 6;
        self.text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    }
}

/// The `.eml` files keel wrote under `data_dir/mail/`, parsed.
pub fn mail_files(data_dir: &std::path::Path) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("mail")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "eml"))
        .map(|entry| Mail::parse(&std::fs::read(entry.path()).expect("readable .eml")))
        .collect()
}
