//! Two `keel serve` processes behind nginx on loopback, sharing one PostgreSQL database,
//! one Redis (a key prefix of the test's own), one RabbitMQ (a queue prefix of the test's
//! own) and one SMTP server, as a production deployment runs them. Checked: a write through
//! one instance is read fresh through the other; an event stream on one instance carries the
//! writes made through the other; the failed-login limit counts across both; every job runs
//! once; SIGTERM to one instance under a steady stream of requests through nginx drops none.
//!
//! Skips with one line when nginx, PostgreSQL, Redis, RabbitMQ or aiosmtpd is missing, unless
//! `KEEL_REQUIRE_SERVICES=1`, in which case it fails.

mod common;

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use common::{
    ADMIN_EMAIL, ADMIN_PASSWORD, Mail, OwnedDatabase, OwnedQueues, SharedServices, SmtpServer,
    bearer_client, eventually, free_port,
    process::{KeelProcess, Nginx, nginx_user_directive},
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The password of every account the test registers.
const PASSWORD: &str = "correct horse battery staple";

/// How long an instance keeps serving after SIGTERM before it stops accepting connections.
const DRAIN_SECS: u64 = 3;

/// How long nginx keeps an idle connection to an instance. Shorter than the drain, as it must
/// be in production: the connections nginx uses during the drain keel closes after their
/// response (`Connection: close`), and those it leaves idle nginx closes itself before the
/// drain ends, so none is closed by keel under a request nginx is sending on it.
const UPSTREAM_KEEPALIVE_SECS: u64 = 1;

/// Failed logins an account may have before it is locked.
const LOGIN_FAILURE_LIMIT: usize = 4;

/// Accounts registered by the job check: two e-mail jobs each.
const REGISTRATIONS: usize = 30;

/// Concurrent clients of the shutdown check.
const LOAD_CLIENTS: usize = 6;

/// The subject of the verification e-mail.
const VERIFY_SUBJECT: &str = "Confirm your e-mail address";

/// The subject of the welcome e-mail (`KEEL_PUBLIC_URL`'s host).
const WELCOME_SUBJECT: &str = "Welcome to keel.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_nginx() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    reads_are_fresh_across_instances(&cluster).await;
    events_cross_instances(&cluster).await;
    the_login_limit_counts_across_instances(&cluster).await;
    every_job_runs_once(&cluster).await;
    sigterm_drops_no_request(&mut cluster).await;
}

/// A write through one instance is seen by the next read through the other, even when that
/// one had the old value cached; the same through nginx.
async fn reads_are_fresh_across_instances(cluster: &Cluster) {
    let user = cluster
        .create_user(&cluster.proxy, "fresh@example.com")
        .await;
    let id = user["id"].as_str().expect("id");
    let path = format!("/users/{id}");
    for round in 0..10 {
        let (reader, writer) = if round % 2 == 0 {
            (&cluster.b, &cluster.a)
        } else {
            (&cluster.a, &cluster.b)
        };
        // Warms the reader's cache (shared through Redis) with the current revision.
        let before = cluster.get_json(&reader.url(&path)).await;
        let name = format!("Name {round}");
        let response = cluster
            .admin
            .patch(writer.url(&path))
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("PATCH sent");
        assert_eq!(response.status(), 200, "renaming through {}", writer.name);
        let after = cluster.get_json(&reader.url(&path)).await;
        assert_eq!(
            after["name"], name,
            "{} read a stale user after a write through {} (before: {before})",
            reader.name, writer.name
        );
    }
    for round in 0..10 {
        let name = format!("Proxied {round}");
        cluster.get_json(&cluster.proxy_url(&path)).await;
        let response = cluster
            .admin
            .patch(cluster.proxy_url(&path))
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("PATCH sent");
        assert_eq!(response.status(), 200);
        // Two reads: nginx sends them to either instance.
        for _ in 0..2 {
            let read = cluster.get_json(&cluster.proxy_url(&path)).await;
            assert_eq!(read["name"], name, "a stale read through nginx");
        }
    }
}

/// A WebSocket stream on instance A carries a user created through B, and one opened through
/// nginx (its upgrade headers) carries users created through each instance.
async fn events_cross_instances(cluster: &Cluster) {
    let mut direct = cluster.websocket(&cluster.a.base()).await;
    let created = cluster.create_user(&cluster.b, "event-b@example.com").await;
    let event = next_event(&mut direct).await;
    assert_eq!(event["event"]["type"], "user.created", "{event}");
    assert_eq!(event["event"]["data"]["id"], created["id"], "{event}");

    let mut proxied = cluster.websocket(&cluster.proxy_base()).await;
    for instance in [&cluster.a, &cluster.b] {
        let email = format!("event-via-{}@example.com", instance.name);
        let created = cluster.create_user(instance, &email).await;
        let event = next_event(&mut proxied).await;
        assert_eq!(event["event"]["type"], "user.created", "{event}");
        assert_eq!(event["event"]["data"]["id"], created["id"], "{event}");
    }
}

/// Failed logins alternate between the instances: the account is locked after
/// `LOGIN_FAILURE_LIMIT` failures in all, on both, where each instance alone has seen only
/// half of them.
async fn the_login_limit_counts_across_instances(cluster: &Cluster) {
    let email = "locked@example.com";
    let response = cluster
        .admin
        .post(cluster.proxy_url("/users"))
        .json(&json!({"email": email, "name": "Locked Out", "password": PASSWORD}))
        .send()
        .await
        .expect("POST sent");
    assert_eq!(response.status(), 201);
    let login = |instance: &Instance, password: &str| {
        let request = cluster
            .anon
            .post(instance.url("/auth/login"))
            .json(&json!({"email": email, "password": password}));
        async move { request.send().await.expect("login sent").status().as_u16() }
    };
    let instances = [&cluster.a, &cluster.b];
    for attempt in 0..LOGIN_FAILURE_LIMIT {
        let instance = instances[attempt % 2];
        let status = login(instance, "not the password at all").await;
        assert_eq!(status, 401, "failure {} on {}", attempt + 1, instance.name);
    }
    for instance in instances {
        assert_eq!(
            login(instance, PASSWORD).await,
            429,
            "the account is locked on {} after {LOGIN_FAILURE_LIMIT} failures across both",
            instance.name
        );
    }
}

/// Registrations through nginx each queue a welcome and a verification e-mail: every job
/// succeeds at its first attempt on one of the instances, and each message arrives once.
async fn every_job_runs_once(cluster: &Cluster) {
    let mut users = HashSet::new();
    for n in 0..REGISTRATIONS {
        let email = format!("job-{n}@example.com");
        let response = cluster
            .anon
            .post(cluster.proxy_url("/auth/register"))
            .json(&json!({"email": email, "name": "Job Person", "password": PASSWORD}))
            .send()
            .await
            .expect("registration sent");
        assert_eq!(response.status(), 201, "registering {email}");
        let body: Value = response.json().await.expect("registration JSON");
        users.insert(body["user"]["id"].as_str().expect("id").to_owned());
    }
    let expected = 2 * REGISTRATIONS;
    let jobs = eventually(30, "every e-mail job to succeed", || async {
        let jobs = cluster.jobs().await;
        let done = jobs.len() == expected && jobs.iter().all(|job| job["state"] == "succeeded");
        done.then_some(jobs)
    })
    .await;
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for job in &jobs {
        assert_eq!(job["attempts"], 1, "each job ran once: {job}");
        assert!(
            users.contains(job["payload"]["user_id"].as_str().expect("user_id")),
            "{job}"
        );
        *kinds
            .entry(job["kind"].as_str().expect("kind").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        kinds.get("email.welcome"),
        Some(&REGISTRATIONS),
        "{kinds:?}"
    );
    assert_eq!(kinds.get("email.verify"), Some(&REGISTRATIONS), "{kinds:?}");

    // Every job recorded its success, so every message has been handed to the server.
    let mails: Vec<Mail> = cluster
        .smtp
        .messages()
        .iter()
        .map(|raw| Mail::parse(raw))
        .collect();
    let mut seen = HashSet::new();
    for mail in &mails {
        assert!(
            seen.insert((mail.to.clone(), mail.subject.clone())),
            "sent twice: {:?} to {}",
            mail.subject,
            mail.to
        );
    }
    for n in 0..REGISTRATIONS {
        for subject in [WELCOME_SUBJECT, VERIFY_SUBJECT] {
            let to = format!("job-{n}@example.com");
            assert!(
                mails
                    .iter()
                    .any(|mail| mail.to.contains(&to) && mail.subject == subject),
                "no {subject:?} to {to}"
            );
        }
    }
    assert_eq!(mails.len(), expected, "one message per job");

    // Each succeeded job is logged once, by the instance that ran it.
    let (ran_on_a, ran_on_b) = (cluster.a.jobs_succeeded(), cluster.b.jobs_succeeded());
    let mut all: Vec<&String> = ran_on_a.iter().chain(&ran_on_b).collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        ran_on_a.len() + ran_on_b.len(),
        "a job ran on both"
    );
    assert_eq!(all.len(), expected, "every job is logged as succeeded");
}

/// Clients send a steady stream of reads and creations through nginx while instance A gets
/// SIGTERM: every request is answered successfully, every created user can be read back, and
/// A, which served requests during its drain, exits cleanly.
async fn sigterm_drops_no_request(cluster: &mut Cluster) {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..LOAD_CLIENTS {
        let load = Load {
            client,
            http: bearer_client(&cluster.admin_token),
            base: cluster.proxy_base(),
            stop: Arc::clone(&stop),
            answered: Arc::clone(&answered),
        };
        clients.push(tokio::spawn(load.run()));
    }
    let count = Arc::clone(&answered);
    let at_least = |n: usize| {
        let count = Arc::clone(&count);
        move || {
            let count = Arc::clone(&count);
            async move { (count.load(Ordering::SeqCst) >= n).then_some(()) }
        }
    };
    eventually(10, "the load to get going", at_least(100)).await;

    let sigterm_at = SystemTime::now();
    cluster.a.terminate();
    let exit = cluster.a.wait_for_exit(DRAIN_SECS + 15).await;
    // The stream goes on through B alone for a while.
    let now = answered.load(Ordering::SeqCst);
    eventually(10, "requests after A stopped", at_least(now + 100)).await;
    stop.store(true, Ordering::SeqCst);

    let mut failures = Vec::new();
    let mut created = Vec::new();
    for client in clients {
        let outcome = client.await.expect("load client");
        failures.extend(outcome.failures);
        created.extend(outcome.created);
    }
    assert!(
        failures.is_empty(),
        "{} requests failed while A stopped, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(exit.success(), "A exits cleanly after SIGTERM: {exit}");

    // The check only means something if A was answering requests well into its drain.
    let served = cluster
        .nginx
        .served_since(cluster.a.port, sigterm_at + Duration::from_secs(1));
    assert!(
        served > 0,
        "A answered no request during its drain; the check proves nothing"
    );

    for (id, email) in &created {
        let user = cluster
            .get_json(&cluster.proxy_url(&format!("/users/{id}")))
            .await;
        assert_eq!(user["email"], email.as_str(), "{user}");
    }
    assert!(!created.is_empty());
}

/// One client of the shutdown check: alternately creates a user and reads one back.
struct Load {
    client: usize,
    http: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
}

/// What one load client saw.
struct Outcome {
    /// Requests that were not answered successfully, described.
    failures: Vec<String>,
    /// `(id, email)` of each user it created.
    created: Vec<(String, String)>,
}

impl Load {
    async fn run(self) -> Outcome {
        let mut outcome = Outcome {
            failures: Vec::new(),
            created: Vec::new(),
        };
        let mut n = 0;
        while !self.stop.load(Ordering::SeqCst) {
            n += 1;
            let last = outcome.created.last().map(|(id, _)| id.clone());
            match last.filter(|_| n % 2 == 0) {
                Some(id) => {
                    let url = format!("{}/users/{id}", self.base);
                    match self.http.get(&url).send().await {
                        Ok(response) if response.status() == 200 => {}
                        Ok(response) => outcome
                            .failures
                            .push(format!("GET {url}: {}", response.status())),
                        Err(error) => outcome.failures.push(format!("GET {url}: {error}")),
                    }
                }
                None => {
                    let email = format!("load-{}-{n}@example.com", self.client);
                    let result = self
                        .http
                        .post(format!("{}/users", self.base))
                        .json(&json!({"email": email, "name": "Load Person"}))
                        .send()
                        .await;
                    match result {
                        Ok(response) if response.status() == 201 => {
                            let user: Value = response.json().await.expect("user JSON");
                            let id = user["id"].as_str().expect("id").to_owned();
                            outcome.created.push((id, email));
                        }
                        Ok(response) => outcome
                            .failures
                            .push(format!("POST {email}: {}", response.status())),
                        Err(error) => outcome.failures.push(format!("POST {email}: {error}")),
                    }
                }
            }
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
        outcome
    }
}

/// Everything the test runs, stopped and removed when dropped (in field order: the proxy,
/// the instances, then what they shared).
struct Cluster {
    nginx: Nginx,
    a: Instance,
    b: Instance,
    smtp: SmtpServer,
    /// Sends the bootstrap admin's access token.
    admin: reqwest::Client,
    admin_token: String,
    /// Sends no credentials.
    anon: reqwest::Client,
    /// Requests through nginx.
    proxy: Proxy,
    _queues: OwnedQueues,
    _database: OwnedDatabase,
    _dir: tempfile::TempDir,
}

/// Where requests go through nginx.
struct Proxy {
    base: String,
}

/// Something with a base URL that users can be created through.
trait Endpoint {
    fn base(&self) -> String;
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }
}

impl Endpoint for Proxy {
    fn base(&self) -> String {
        self.base.clone()
    }
}

impl Cluster {
    /// Starts everything; `None` (after printing why) when a service is missing and not
    /// required.
    async fn start() -> Option<Self> {
        let nginx_binary = Nginx::binary()?;
        let SharedServices {
            database_url,
            redis_url,
            redis_prefix,
            amqp_url,
            smtp,
            queues,
            database,
        } = SharedServices::start().await?;
        let dir = tempfile::tempdir().expect("temporary directory");
        let shared = vec![
            ("DATABASE_URL", database_url),
            ("REDIS_URL", redis_url),
            ("KEEL_REDIS_KEY_PREFIX", redis_prefix),
            ("AMQP_URL", amqp_url),
            ("KEEL_AMQP_QUEUE_PREFIX", queues.prefix.clone()),
            ("SMTP_URL", smtp.url()),
            ("KEEL_PUBLIC_URL", "https://keel.test/".to_owned()),
            ("KEEL_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
            ("KEEL_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
            ("KEEL_TRUSTED_PROXIES", "127.0.0.1".to_owned()),
            ("KEEL_SHUTDOWN_DRAIN_SECS", DRAIN_SECS.to_string()),
            ("KEEL_SHUTDOWN_TIMEOUT_SECS", "5".to_owned()),
            ("KEEL_LOGIN_FAILURE_LIMIT", LOGIN_FAILURE_LIMIT.to_string()),
            ("KEEL_LOGIN_FAILURE_WINDOW_SECS", "600".to_owned()),
            // Only the failed-login limit is under test; the load would hit the others.
            ("KEEL_RATE_LIMIT_PER_MINUTE", "0".to_owned()),
            ("KEEL_AUTH_RATE_LIMIT_PER_MINUTE", "0".to_owned()),
            ("KEEL_PASSWORD_HASH_MEMORY_KIB", "1024".to_owned()),
            ("KEEL_PASSWORD_HASH_ITERATIONS", "1".to_owned()),
            ("KEEL_DATABASE_MAX_CONNECTIONS", "8".to_owned()),
            ("KEEL_JOBS_POLL_MS", "100".to_owned()),
        ];
        // A first, alone: it migrates the database, creates the admin and the signing key.
        let a = Instance::start("a", dir.path(), &shared, None).await;
        let key = a.data_dir.join("jwt-ed25519.pem");
        let b = Instance::start("b", dir.path(), &shared, Some(&key)).await;
        let nginx_port = free_port();
        let nginx_dir = dir.path().join("nginx");
        let nginx = Nginx::start(
            &nginx_binary,
            &nginx_dir,
            nginx_port,
            &nginx_config(&nginx_dir, nginx_port, &[a.port, b.port]),
        )
        .await;
        let anon = reqwest::Client::new();
        let proxy = Proxy {
            base: format!("http://127.0.0.1:{}", nginx.port),
        };
        let admin_token = common::login(
            &anon,
            format!("127.0.0.1:{}", nginx.port)
                .parse()
                .expect("address"),
            ADMIN_EMAIL,
            ADMIN_PASSWORD,
        )
        .await;
        Some(Self {
            nginx,
            a,
            b,
            smtp,
            admin: bearer_client(&admin_token),
            admin_token,
            anon,
            proxy,
            _queues: queues,
            _database: database,
            _dir: dir,
        })
    }

    fn proxy_base(&self) -> String {
        self.proxy.base()
    }

    fn proxy_url(&self, path: &str) -> String {
        self.proxy.url(path)
    }

    /// Creates a user through `endpoint` as the admin.
    async fn create_user(&self, endpoint: &impl Endpoint, email: &str) -> Value {
        let response = self
            .admin
            .post(endpoint.url("/users"))
            .json(&json!({"email": email, "name": "Ada Lovelace"}))
            .send()
            .await
            .expect("POST sent");
        assert_eq!(response.status(), 201, "creating {email}");
        response.json().await.expect("user JSON")
    }

    /// `GET url` as the admin; panics unless the answer is 200.
    async fn get_json(&self, url: &str) -> Value {
        let response = self.admin.get(url).send().await.expect("GET sent");
        assert_eq!(response.status(), 200, "GET {url}");
        response.json().await.expect("JSON")
    }

    /// Every job, through instance B.
    async fn jobs(&self) -> Vec<Value> {
        let mut jobs = Vec::new();
        let mut query = String::new();
        loop {
            let page = self
                .get_json(&self.b.url(&format!("/jobs?limit=100{query}")))
                .await;
            jobs.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(cursor) => query = format!("&cursor={cursor}"),
                None => return jobs,
            }
        }
    }

    /// A WebSocket on `base`'s `/events/ws` for user creations, ready: its first command
    /// has been answered.
    async fn websocket(&self, base: &str) -> Ws {
        let response = self
            .admin
            .post(format!("{base}/events/ticket"))
            .send()
            .await
            .expect("ticket request sent");
        assert_eq!(response.status(), 200, "a ticket from {base}");
        let body: Value = response.json().await.expect("ticket JSON");
        let ticket = body["ticket"].as_str().expect("ticket");
        let url = format!(
            "{}/events/ws?ticket={ticket}&types=user.created",
            base.replacen("http://", "ws://", 1)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket opened");
        ws.send(Message::Text(json!({"type": "ping"}).to_string().into()))
            .await
            .expect("ping sent");
        assert_eq!(next_message(&mut ws).await, json!({"type": "pong"}));
        ws
    }
}

/// A WebSocket client.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text message; panics if none comes within 10 s.
async fn next_message(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the stream is open")
            .expect("a readable message");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON message");
        }
    }
}

/// The next event message.
async fn next_event(ws: &mut Ws) -> Value {
    let message = next_message(ws).await;
    assert_eq!(message["type"], "event", "{message}");
    message
}

/// A `keel serve` child process with its own data directory and log file.
struct Instance {
    name: &'static str,
    port: u16,
    data_dir: PathBuf,
    process: KeelProcess,
}

impl Endpoint for Instance {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Instance {
    /// Starts one with the `shared` settings (and `key` to sign tokens with, if given) and
    /// waits until it is ready.
    async fn start(
        name: &'static str,
        dir: &Path,
        shared: &[(&str, String)],
        key: Option<&Path>,
    ) -> Self {
        let port = free_port();
        let data_dir = dir.join(name);
        std::fs::create_dir(&data_dir).expect("data directory");
        let mut env: Vec<(String, String)> = shared
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        env.extend([
            ("HOST".to_owned(), "127.0.0.1".to_owned()),
            ("PORT".to_owned(), port.to_string()),
            ("KEEL_DATA_DIR".to_owned(), data_dir.display().to_string()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ]);
        if let Some(key) = key {
            env.push((
                "KEEL_JWT_PRIVATE_KEY_FILE".to_owned(),
                key.display().to_string(),
            ));
        }
        let log = dir.join(format!("{name}.log"));
        let mut process = KeelProcess::spawn(name, &["serve"], &env, log);
        process
            .wait_until_ready(&format!("http://127.0.0.1:{port}/readyz"))
            .await;
        Self {
            name,
            port,
            data_dir,
            process,
        }
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        self.process.terminate();
    }

    /// Waits for the process to exit, for at most `seconds`.
    async fn wait_for_exit(&mut self, seconds: u64) -> ExitStatus {
        self.process.wait_for_exit(seconds).await
    }

    /// The ids of the jobs this instance logged as succeeded.
    fn jobs_succeeded(&self) -> Vec<String> {
        self.process.jobs_succeeded()
    }
}

/// nginx's configuration: one worker, everything under `dir`, listening on `port`, with the
/// upstream settings a production proxy for keel has (HTTP/1.1 and keep-alive to the
/// instances, `X-Forwarded-For`, WebSocket upgrades on `/events/ws`).
fn nginx_config(dir: &Path, port: u16, upstreams: &[u16]) -> String {
    let dir = dir.display();
    let mut servers = String::new();
    for upstream in upstreams {
        writeln!(servers, "        server 127.0.0.1:{upstream};").expect("string");
    }
    let user = nginx_user_directive();
    format!(
        r#"{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    log_format upstreams '$msec $status $upstream_addr';
    access_log {dir}/access.log upstreams;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream keel {{
{servers}        keepalive 16;
        keepalive_timeout {UPSTREAM_KEEPALIVE_SECS}s;
    }}

    server {{
        listen 127.0.0.1:{port};

        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        # Another instance gets a request only if none of it reached the first (nginx's
        # default: never for a POST that was sent).
        proxy_next_upstream error timeout;

        location / {{
            proxy_set_header Connection "";
            proxy_pass http://keel;
        }}

        location = /events/ws {{
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
            proxy_pass http://keel;
        }}
    }}
}}
"#
    )
}
