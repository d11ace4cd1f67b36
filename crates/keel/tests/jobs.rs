//! Background jobs and the e-mail flows, on both queues (the database, RabbitMQ) and both
//! databases, against real components: RabbitMQ at 127.0.0.1:5672 (a queue prefix per
//! test), an SMTP server (aiosmtpd), and `keel worker` processes that get killed.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

use common::{
    Backend, Mail, SmtpServer, TestApp, amqp_url, delete_queues, eventually, mail_files, problem,
    queue_prefix,
};
use keel::{
    config::Config,
    db::Db,
    jobs::{Handlers, Jobs, NewJob},
    shutdown::Shutdown,
};
use secrecy::SecretString;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

/// Which queue a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Database,
    RabbitMq,
}

/// A test server on `backend` and `queue`, and the RabbitMQ queues to delete afterwards.
struct Setup {
    app: TestApp,
    amqp: Option<(String, String)>,
}

impl Setup {
    async fn start(
        backend: Backend,
        queue: Queue,
        adjust: impl FnOnce(&mut Config),
    ) -> Option<Self> {
        let amqp = match queue {
            Queue::Database => None,
            Queue::RabbitMq => Some((amqp_url().await?, queue_prefix())),
        };
        let broker = amqp.clone();
        let app = common::spawn_with(backend, move |config| {
            fast_jobs(config);
            if let Some((url, prefix)) = broker {
                config.amqp_url = Some(SecretString::from(url));
                config.amqp_queue_prefix = prefix;
            }
            adjust(config);
        })
        .await?;
        Some(Self { app, amqp })
    }

    async fn finish(self) {
        let Self { app, amqp } = self;
        app.stop().await.expect("server stops cleanly");
        if let Some((url, prefix)) = amqp {
            delete_queues(&url, &prefix).await;
        }
    }
}

/// Quick polling and retries, so that the tests do not wait on production delays.
fn fast_jobs(config: &mut Config) {
    config.jobs_poll_ms = 50;
    config.jobs_retry_base_ms = 200;
    config.jobs_retry_max_secs = 5;
    config.jobs_lease_secs = 3;
    config.jobs_timeout_secs = 10;
    config.shutdown_timeout_secs = 5;
}

/// Generates one `#[tokio::test]` per listed (database, queue) pair for each test.
macro_rules! queue_tests {
    ($($name:ident: [$($variant:ident),*]),* $(,)?) => {
        $(
            mod $name {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $variant() {
                        let (backend, queue) = super::variant(stringify!($variant));
                        super::$name(backend, queue).await;
                    }
                )*
            }
        )*
    };
}

fn variant(name: &str) -> (Backend, Queue) {
    match name {
        "sqlite_database" => (Backend::Sqlite, Queue::Database),
        "postgres_database" => (Backend::Postgres, Queue::Database),
        "sqlite_rabbitmq" => (Backend::Sqlite, Queue::RabbitMq),
        "postgres_rabbitmq" => (Backend::Postgres, Queue::RabbitMq),
        other => panic!("unknown variant {other}"),
    }
}

queue_tests! {
    registration_mail_verification_and_password_reset: [sqlite_database, postgres_database, sqlite_rabbitmq, postgres_rabbitmq],
    mail_goes_through_a_real_smtp_server: [sqlite_database, postgres_rabbitmq],
    a_failing_job_backs_off_then_dies_and_can_be_retried: [sqlite_database, postgres_database, postgres_rabbitmq],
    a_rolled_back_registration_enqueues_nothing: [sqlite_database, postgres_database, postgres_rabbitmq],
    the_admin_api_lists_filters_and_guards_jobs: [sqlite_database, postgres_database],
    two_workers_never_run_the_same_job: [sqlite_database, postgres_database, postgres_rabbitmq],
    a_killed_worker_s_job_completes_exactly_once: [sqlite_database, postgres_database, postgres_rabbitmq],
    mail_queued_while_smtp_is_down_goes_out_once_it_is_back: [sqlite_database, postgres_rabbitmq],
    a_cancelled_job_never_runs: [sqlite_database, postgres_database, sqlite_rabbitmq, postgres_rabbitmq],
}

async fn register(app: &TestApp, email: &str) -> Value {
    let response = app
        .anon
        .post(app.url("/auth/register"))
        .json(&json!({"email": email, "name": "Ada Lovelace", "password": PASSWORD}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 201, "registering {email}");
    response.json().await.expect("registration JSON")
}

/// Waits for the `.eml` file with `subject` to `to`.
async fn mail_file(app: &TestApp, to: &str, subject: &str) -> Mail {
    eventually(20, &format!("the e-mail {subject:?} to {to}"), || async {
        mail_files(&app.data_dir)
            .into_iter()
            .find(|mail| mail.to.contains(to) && mail.subject == subject)
    })
    .await
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.anon
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

/// Registration sends a welcome and a verification e-mail; the verification link's token
/// verifies the address once; the reset flow changes the password and ends every session.
async fn registration_mail_verification_and_password_reset(backend: Backend, queue: Queue) {
    let Some(setup) = Setup::start(backend, queue, |_| {}).await else {
        return;
    };
    let app = &setup.app;
    let registered = register(app, "ada@example.com").await;
    let id = registered["user"]["id"].as_str().expect("id").to_owned();
    assert_eq!(registered["user"]["email_verified_at"], Value::Null);
    let refresh = registered["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();

    let welcome = mail_file(app, "ada@example.com", "Welcome to 127.0.0.1").await;
    assert!(
        welcome.text.contains("Welcome, Ada Lovelace!"),
        "{}",
        welcome.text
    );
    assert!(welcome.html.contains("<h1"), "an HTML body too");
    let verify = mail_file(app, "ada@example.com", "Confirm your e-mail address").await;
    assert!(verify.html.contains("verify-email?token="));
    let token = verify.link_token();
    assert_eq!(token.len(), 43, "{token}");

    // A wrong token, a malformed body, then the right token once.
    let response = post(app, "/auth/verify-email", json!({"token": "not-a-token"})).await;
    problem(response, 400).await;
    let response = post(app, "/auth/verify-email", json!({"token": 5})).await;
    problem(response, 422).await;
    let response = post(app, "/auth/verify-email", json!({"token": token})).await;
    assert_eq!(response.status(), 200);
    let user: Value = response.json().await.expect("user JSON");
    assert!(user["email_verified_at"].is_string(), "{user}");
    let response = post(app, "/auth/verify-email", json!({"token": token})).await;
    problem(response, 400).await;
    let stored: Value = app
        .get(&format!("/users/{id}"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stored["email_verified_at"], user["email_verified_at"]);

    // A new address is unverified until the link sent to it is followed.
    let access = registered["access_token"].as_str().expect("access token");
    let response = app
        .anon
        .patch(app.url("/users/me"))
        .bearer_auth(access)
        .json(&json!({"email": "lovelace@example.com", "current_password": PASSWORD}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let changed: Value = response.json().await.expect("JSON");
    assert_eq!(changed["email_verified_at"], Value::Null);
    let again = mail_file(app, "lovelace@example.com", "Confirm your e-mail address").await;
    let response = post(
        app,
        "/auth/verify-email",
        json!({"token": again.link_token()}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let response = app
        .anon
        .patch(app.url("/users/me"))
        .bearer_auth(access)
        .json(&json!({"email": "ada@example.com", "current_password": PASSWORD}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);

    // An unknown address gets the same answer and no e-mail.
    let response = post(
        app,
        "/auth/forgot-password",
        json!({"email": "nobody@example.com"}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let response = post(
        app,
        "/auth/forgot-password",
        json!({"email": "ADA@example.com"}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let reset = mail_file(app, "ada@example.com", "Reset your password").await;
    let token = reset.link_token();
    let response = post(
        app,
        "/auth/reset-password",
        json!({"token": token, "password": "short"}),
    )
    .await;
    problem(response, 422).await;
    let new_password = "a brand new passphrase";
    let response = post(
        app,
        "/auth/reset-password",
        json!({"token": token, "password": new_password}),
    )
    .await;
    assert_eq!(response.status(), 204);
    let response = post(
        app,
        "/auth/reset-password",
        json!({"token": token, "password": new_password}),
    )
    .await;
    problem(response, 400).await;

    // Every session ended; only the new password logs in.
    let response = post(app, "/auth/refresh", json!({"refresh_token": refresh})).await;
    problem(response, 401).await;
    let response = post(
        app,
        "/auth/login",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    problem(response, 401).await;
    common::login(&app.anon, app.addr, "ada@example.com", new_password).await;

    // Every job succeeded; none was sent for the unknown address.
    eventually(20, "all six jobs to succeed", || async {
        (list_jobs(app, "?state=succeeded").await.len() == 6).then_some(())
    })
    .await;
    assert_eq!(list_jobs(app, "").await.len(), 6);
    let mails = mail_files(&app.data_dir);
    assert_eq!(
        mails.len(),
        5,
        "welcome, 3 verifications and the reset only: {:?}",
        mails
            .iter()
            .map(|m| (&m.to, &m.subject))
            .collect::<Vec<_>>()
    );
    setup.finish().await;
}

/// The same over SMTP: the message is read from the server's mailbox and its link followed.
async fn mail_goes_through_a_real_smtp_server(backend: Backend, queue: Queue) {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let url = smtp.url();
    let Some(setup) = Setup::start(backend, queue, move |config| {
        config.smtp_url = Some(SecretString::from(url));
        config.public_url = "https://app.example.com/".to_owned();
    })
    .await
    else {
        return;
    };
    let app = &setup.app;
    register(app, "grace@example.com").await;
    let verify = eventually(20, "the verification e-mail over SMTP", || async {
        smtp.messages()
            .iter()
            .map(|raw| Mail::parse(raw))
            .find(|mail| mail.subject == "Confirm your e-mail address")
    })
    .await;
    assert!(verify.to.contains("grace@example.com"));
    assert!(
        verify.message_id.ends_with("@keel>"),
        "{}",
        verify.message_id
    );
    assert!(
        verify
            .text
            .contains("https://app.example.com/verify-email?token="),
        "{}",
        verify.text
    );
    let response = post(
        app,
        "/auth/verify-email",
        json!({"token": verify.link_token()}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let welcome = eventually(20, "the welcome e-mail over SMTP", || async {
        smtp.messages()
            .iter()
            .map(|raw| Mail::parse(raw))
            .find(|mail| mail.subject == "Welcome to app.example.com")
    })
    .await;
    assert!(welcome.text.contains("grace@example.com"));
    assert!(
        mail_files(&app.data_dir).is_empty(),
        "no .eml files with SMTP"
    );
    setup.finish().await;
}

/// A job's attempts as the admin API shows them.
async fn list_jobs(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app
        .get(&format!("/jobs{query}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.expect("JSON");
    page["items"].as_array().expect("items").clone()
}

async fn job(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/jobs/{id}")).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    response.json().await.expect("JSON")
}

/// An SMTP "server" that hangs up on every connection: sending always fails.
async fn refusing_smtp() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    port
}

/// Registrations made while the SMTP server refuses every connection: each welcome job
/// fails and backs off, none dies within its attempts, and once a real server listens on
/// that address again every welcome e-mail arrives, once.
async fn mail_queued_while_smtp_is_down_goes_out_once_it_is_back(backend: Backend, queue: Queue) {
    const USERS: usize = 5;
    let refusing = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = refusing.local_addr().expect("addr").port();
    let refuser = tokio::spawn(async move {
        while let Ok((socket, _)) = refusing.accept().await {
            drop(socket);
        }
    });
    let Some(setup) = Setup::start(backend, queue, move |config| {
        config.smtp_url = Some(SecretString::from(format!("smtp://127.0.0.1:{port}")));
    })
    .await
    else {
        refuser.abort();
        return;
    };
    let app = &setup.app;
    let emails: Vec<String> = (0..USERS)
        .map(|i| format!("down-{i}@example.com"))
        .collect();
    for email in &emails {
        register(app, email).await;
    }
    eventually(20, "a failed attempt of every welcome job", || async {
        let jobs = list_jobs(app, "?kind=email.welcome").await;
        let failed = jobs
            .iter()
            .filter(|job| job["attempts"].as_i64().unwrap_or(0) >= 1 && job["state"] == "queued")
            .count();
        (jobs.len() == USERS && failed == USERS).then_some(())
    })
    .await;
    // The server comes back on the same address.
    refuser.abort();
    let _ = refuser.await;
    let Some(smtp) = SmtpServer::start_on(port).await else {
        setup.finish().await;
        return;
    };
    let welcomes = || {
        smtp.messages()
            .iter()
            .map(|raw| Mail::parse(raw))
            .filter(|mail| mail.subject.starts_with("Welcome"))
            .collect::<Vec<_>>()
    };
    eventually(30, "every welcome e-mail", || async {
        (welcomes().len() >= USERS).then_some(())
    })
    .await;
    // Nothing more comes: each address got its welcome once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = welcomes();
    for email in &emails {
        let count = received
            .iter()
            .filter(|mail| mail.to.contains(email.as_str()))
            .count();
        assert_eq!(count, 1, "welcome e-mails to {email}");
    }
    assert_eq!(received.len(), USERS);
    let jobs = list_jobs(app, "?kind=email.welcome").await;
    assert!(
        jobs.iter().all(|job| job["state"] == "succeeded"),
        "every welcome job succeeded, none died: {jobs:?}"
    );
    println!(
        "{USERS} welcome e-mails queued while SMTP was down, each sent once after it returned, \
         after {:?} attempts",
        jobs.iter()
            .map(|job| job["attempts"].clone())
            .collect::<Vec<_>>()
    );
    setup.finish().await;
}

/// Each failure waits a random delay within the doubling step (100–200 ms, 200–400 ms,
/// 400–800 ms with a 200 ms base), then the job is dead with its error; retrying it
/// through the API queues it again with fresh attempts.
async fn a_failing_job_backs_off_then_dies_and_can_be_retried(backend: Backend, queue: Queue) {
    let port = refusing_smtp().await;
    let Some(setup) = Setup::start(backend, queue, move |config| {
        config.smtp_url = Some(SecretString::from(format!("smtp://127.0.0.1:{port}")));
        config.jobs_max_attempts = 4;
    })
    .await
    else {
        return;
    };
    let app = &setup.app;
    register(app, "fail@example.com").await;
    let id = eventually(10, "the welcome job", || async {
        list_jobs(app, "?kind=email.welcome")
            .await
            .first()
            .and_then(|job| job["id"].as_str().map(str::to_owned))
    })
    .await;
    // Each failed attempt leaves the job queued with run_at = failure time + delay.
    let mut delays: HashMap<i64, f64> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let job = job(app, &id).await;
        if job["state"] == "dead" {
            break job;
        }
        if job["state"] == "queued" && job["attempts"].as_i64().unwrap_or(0) > 0 {
            let at = |key: &str| {
                chrono::DateTime::parse_from_rfc3339(job[key].as_str().expect("timestamp"))
                    .expect("RFC 3339")
            };
            let delay = (at("run_at") - at("updated_at"))
                .num_microseconds()
                .expect("small") as f64
                / 1000.0;
            delays.insert(job["attempts"].as_i64().expect("attempts"), delay);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never died: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead["attempts"], 4);
    let error = dead["last_error"].as_str().expect("the last error is kept");
    assert!(error.contains("SMTP"), "{error}");
    assert!(dead["finished_at"].is_string());
    assert_eq!(
        delays.len(),
        3,
        "a delay after each of the first 3 attempts: {delays:?}"
    );
    for (attempt, delay) in &delays {
        let step = 200.0 * 2f64.powi(i32::try_from(*attempt).expect("small") - 1);
        // Two significant digits of rounding on RabbitMQ's retry queues, and clock slack.
        assert!(
            *delay >= step / 2.0 * 0.95 && *delay <= step + 5.0,
            "attempt {attempt}: delay {delay} ms outside [{}, {step}] ({delays:?})",
            step / 2.0
        );
    }
    assert!(delays[&3] > delays[&1], "delays grow: {delays:?}");

    let response = app
        .client
        .post(app.url(&format!("/jobs/{id}/retry")))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let retried: Value = response.json().await.expect("JSON");
    // Fresh attempts: a worker may already have run (and failed) the first of them by the
    // time the answer was read back, but no more.
    assert!(retried["attempts"].as_i64() <= Some(1), "{retried}");
    assert!(retried["state"] == "queued" || retried["state"] == "running");
    // It runs again (and, the server still refusing, fails again).
    eventually(10, "the retried job to run", || async {
        let job = job(app, &id).await;
        (job["attempts"].as_i64() > Some(0)).then_some(())
    })
    .await;
    setup.finish().await;
}

/// Runs `statements` on the test's database, over a connection of the test's own.
async fn run_sql(backend: Backend, url: String, statements: Vec<&'static str>) {
    use sqlx::Connection;
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            for statement in statements {
                sqlx::query(statement)
                    .execute(&mut conn)
                    .await
                    .expect("statement");
            }
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            for statement in statements {
                sqlx::query(statement)
                    .execute(&mut conn)
                    .await
                    .expect("statement");
            }
        }
    }
}

/// A trigger makes the job insert fail inside the registration's transaction: the account
/// must not exist either, and nothing is sent.
async fn a_rolled_back_registration_enqueues_nothing(backend: Backend, queue: Queue) {
    let Some(setup) = Setup::start(backend, queue, |_| {}).await else {
        return;
    };
    let app = &setup.app;
    let (create, drop_trigger) = match backend {
        Backend::Sqlite => (
            vec![
                "CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'refused'); END",
            ],
            vec!["DROP TRIGGER refuse_jobs"],
        ),
        Backend::Postgres => (
            vec![
                "CREATE FUNCTION refuse_jobs() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
                "CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse_jobs()",
            ],
            vec!["DROP TRIGGER refuse_jobs ON jobs"],
        ),
    };
    let sql =
        |statements: Vec<&'static str>| run_sql(backend, app.database_url.clone(), statements);
    sql(create).await;
    let response = post(
        app,
        "/auth/register",
        json!({"email": "rollback@example.com", "name": "Roll Back", "password": PASSWORD}),
    )
    .await;
    problem(response, 500).await;
    let users: Value = app
        .get("/users?q=rollback")
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(users["items"], json!([]), "the account was rolled back");
    assert!(list_jobs(app, "").await.is_empty(), "no job was queued");

    // Without the trigger the same registration goes through, e-mails and all.
    sql(drop_trigger).await;
    register(app, "rollback@example.com").await;
    eventually(20, "both e-mail jobs to succeed", || async {
        let jobs = list_jobs(app, "?state=succeeded").await;
        (jobs.len() == 2).then_some(())
    })
    .await;
    assert!(mail_files(&app.data_dir).len() == 2);
    setup.finish().await;
}

async fn the_admin_api_lists_filters_and_guards_jobs(backend: Backend, queue: Queue) {
    let Some(setup) = Setup::start(backend, queue, |_| {}).await else {
        return;
    };
    let app = &setup.app;
    for n in 0..3 {
        register(app, &format!("user{n}@example.com")).await;
    }
    eventually(20, "six jobs to succeed", || async {
        (list_jobs(app, "?state=succeeded").await.len() == 6).then_some(())
    })
    .await;
    let welcome = list_jobs(app, "?kind=email.welcome").await;
    assert_eq!(welcome.len(), 3);
    assert!(welcome.iter().all(|job| job["kind"] == "email.welcome"));
    assert!(list_jobs(app, "?state=dead").await.is_empty());

    // Keyset pages of 4 then 2, newest first, with a Link to the next page.
    let response = app.get("/jobs?limit=4").send().await.expect("sent");
    let link = common::header(&response, "link");
    let first: Value = response.json().await.expect("JSON");
    assert_eq!(first["items"].as_array().map(Vec::len), Some(4));
    let cursor = first["next_cursor"].as_str().expect("a next page");
    assert!(link.contains(cursor));
    let second: Value = app
        .get(&format!("/jobs?limit=4&cursor={cursor}"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(second["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(second["next_cursor"], Value::Null);
    let ids: Vec<&str> = first["items"]
        .as_array()
        .into_iter()
        .chain(second["items"].as_array())
        .flatten()
        .filter_map(|job| job["id"].as_str())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first, no repeats");

    let id = ids[0];
    let response = app
        .client
        .post(app.url(&format!("/jobs/{id}/retry")))
        .send()
        .await
        .expect("sent");
    let body = problem(response, 409).await;
    assert_eq!(body["type"], "/problems/job-not-dead");
    let unknown = uuid::Uuid::now_v7();
    problem(
        app.get(&format!("/jobs/{unknown}"))
            .send()
            .await
            .expect("sent"),
        404,
    )
    .await;
    problem(
        app.client
            .post(app.url(&format!("/jobs/{unknown}/retry")))
            .send()
            .await
            .expect("sent"),
        404,
    )
    .await;
    problem(app.get("/jobs/not-a-uuid").send().await.expect("sent"), 422).await;
    problem(
        app.get("/jobs?state=sleeping").send().await.expect("sent"),
        422,
    )
    .await;
    problem(app.get("/jobs?limit=0").send().await.expect("sent"), 422).await;
    problem(app.get("/jobs?kind=a%00b").send().await.expect("sent"), 422).await;

    // Admins only.
    problem(
        app.anon.get(app.url("/jobs")).send().await.expect("sent"),
        401,
    )
    .await;
    let token = common::login(&app.anon, app.addr, "user0@example.com", PASSWORD).await;
    let response = app
        .anon
        .get(app.url("/jobs"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    problem(response, 403).await;

    let ready: Value = app
        .get("/readyz")
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(ready["jobs"]["backend"], "database");
    assert_eq!(ready["jobs"]["depth"], 0);
    assert_eq!(ready["jobs"]["dead"], 0);
    setup.finish().await;
}

/// Runs while tracking, per job, how many attempts are running at once.
#[derive(Default)]
struct Tracker {
    running: Mutex<HashMap<String, Arc<AtomicI32>>>,
    runs: Mutex<HashMap<String, u32>>,
    overlaps: AtomicI32,
}

impl Tracker {
    async fn run(&self, id: String) {
        let counter = Arc::clone(
            self.running
                .lock()
                .expect("lock")
                .entry(id.clone())
                .or_default(),
        );
        if counter.fetch_add(1, Ordering::SeqCst) > 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        *self.runs.lock().expect("lock").entry(id).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Two independent workers (each its own pool, lease ids and, on RabbitMQ, connection)
/// share one queue of 60 jobs: each job runs exactly once, never twice at the same time.
async fn two_workers_never_run_the_same_job(backend: Backend, queue: Queue) {
    let Some(setup) = Setup::start(backend, queue, |config| config.jobs_in_server = false).await
    else {
        return;
    };
    let app = &setup.app;
    let mut config = common::test_config(&app.data_dir);
    fast_jobs(&mut config);
    config.database_url = Some(SecretString::from(app.database_url.clone()));
    config.jobs_concurrency = 4;
    if let Some((url, prefix)) = &setup.amqp {
        config.amqp_url = Some(SecretString::from(url.clone()));
        config.amqp_queue_prefix = prefix.clone();
    }
    let tracker = Arc::new(Tracker::default());
    let shutdown = Shutdown::default();
    let mut workers = Vec::new();
    let mut dbs = Vec::new();
    for _ in 0..2 {
        let db = Db::connect(&config).await.expect("worker database");
        let mut handlers = Handlers::default();
        let tracker = Arc::clone(&tracker);
        handlers.register("test.track", move |job| {
            let tracker = Arc::clone(&tracker);
            async move {
                tracker.run(job.payload["n"].to_string()).await;
                Ok(())
            }
        });
        let jobs = Jobs::new(&config, db.clone());
        let (config, shutdown) = (config.clone(), shutdown.clone());
        workers.push(tokio::spawn(async move {
            keel::jobs::worker::run(jobs, handlers, &config, shutdown).await;
        }));
        dbs.push(db);
    }
    let producer = Jobs::new(&config, dbs[0].clone());
    for n in 0..60 {
        producer
            .enqueue(NewJob::new("test.track", json!({ "n": n })))
            .await
            .expect("enqueued");
    }
    eventually(60, "60 jobs to succeed", || async {
        let done = list_jobs(app, "?state=succeeded&limit=100").await.len();
        (done == 60).then_some(())
    })
    .await;
    shutdown.begin();
    for worker in workers {
        worker.await.expect("worker stops");
    }
    assert_eq!(
        tracker.overlaps.load(Ordering::SeqCst),
        0,
        "a job ran twice at once"
    );
    let runs = tracker.runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 60);
    assert!(
        runs.values().all(|&n| n == 1),
        "each job ran once: {runs:?}"
    );
    for db in dbs {
        db.close().await;
    }
    setup.finish().await;
}

/// An SMTP "server" that accepts connections and never answers: a job sending to it hangs.
async fn stalled_smtp() -> (u16, Arc<AtomicI32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicI32::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (port, accepted)
}

/// `keel worker` as its own process, on the test's database and queue.
fn worker_process(setup: &Setup, smtp_url: &str) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .arg("worker")
        .env("DATABASE_URL", &setup.app.database_url)
        .env("KEEL_DATA_DIR", &setup.app.data_dir)
        .env("SMTP_URL", smtp_url)
        .env("KEEL_JOBS_LEASE_SECS", "3")
        .env("KEEL_JOBS_POLL_MS", "50")
        .env("KEEL_PASSWORD_HASH_MEMORY_KIB", "1024")
        .env("KEEL_PASSWORD_HASH_ITERATIONS", "1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    command.env_remove("AMQP_URL");
    if let Some((url, prefix)) = &setup.amqp {
        command
            .env("AMQP_URL", url)
            .env("KEEL_AMQP_QUEUE_PREFIX", prefix);
    }
    command.spawn().expect("keel worker starts")
}

/// A worker is killed (SIGKILL) while both e-mail jobs of a registration hang in the
/// middle of sending; a second worker picks them up once their lease expires, and each
/// message arrives exactly once.
async fn a_killed_worker_s_job_completes_exactly_once(backend: Backend, queue: Queue) {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(setup) = Setup::start(backend, queue, |config| config.jobs_in_server = false).await
    else {
        return;
    };
    let app = &setup.app;
    let (stalled, accepted) = stalled_smtp().await;
    let mut first = worker_process(&setup, &format!("smtp://127.0.0.1:{stalled}"));
    register(app, "killed@example.com").await;
    eventually(30, "both jobs to hang in the first worker", || async {
        let running = list_jobs(app, "?state=running").await.len();
        (running == 2 && accepted.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    first.kill().expect("kill -9");
    first.wait().expect("reaped");

    let mut second = worker_process(&setup, &smtp.url());
    let jobs = eventually(30, "both jobs to succeed in the second worker", || async {
        let jobs = list_jobs(app, "?state=succeeded").await;
        (jobs.len() == 2).then_some(jobs)
    })
    .await;
    for job in &jobs {
        assert_eq!(job["attempts"], 2, "the killed attempt counts: {job}");
    }
    // Let any duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails: Vec<Mail> = smtp.messages().iter().map(|raw| Mail::parse(raw)).collect();
    let subjects: Vec<&str> = mails.iter().map(|mail| mail.subject.as_str()).collect();
    assert_eq!(mails.len(), 2, "each message once: {subjects:?}");
    assert!(subjects.contains(&"Confirm your e-mail address"));
    second.kill().expect("stop the second worker");
    second.wait().expect("reaped");
    setup.finish().await;
}

/// `POST /jobs/{id}/cancel`: a job whose first attempt failed waits for its retry (on
/// RabbitMQ its retry message is already with the broker); cancelled then, it is never
/// claimed again, while a job that is not cancelled retries and succeeds. Only a queued job
/// can be cancelled: a finished one answers 409, an unknown one 404, and a non-admin 403.
async fn a_cancelled_job_never_runs(backend: Backend, queue: Queue) {
    let Some(setup) = Setup::start(backend, queue, |config| config.jobs_in_server = false).await
    else {
        return;
    };
    let app = &setup.app;
    let mut config = common::test_config(&app.data_dir);
    fast_jobs(&mut config);
    // A first retry 1.5–3 s after the failure: time enough to cancel in between.
    config.jobs_retry_base_ms = 3000;
    config.jobs_retry_max_secs = 10;
    config.database_url = Some(SecretString::from(app.database_url.clone()));
    if let Some((url, prefix)) = &setup.amqp {
        config.amqp_url = Some(SecretString::from(url.clone()));
        config.amqp_queue_prefix = prefix.clone();
    }
    let db = Db::connect(&config).await.expect("worker database");
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut handlers = Handlers::default();
    let counted = Arc::clone(&runs);
    handlers.register("test.flaky", move |job| {
        let runs = Arc::clone(&counted);
        async move {
            let name = job.payload["name"].as_str().unwrap_or_default().to_owned();
            *runs.lock().expect("lock").entry(name).or_default() += 1;
            anyhow::ensure!(job.attempt > 1, "the first attempt always fails");
            Ok(())
        }
    });
    let shutdown = Shutdown::default();
    let worker = {
        let (jobs, config, shutdown) = (
            Jobs::new(&config, db.clone()),
            config.clone(),
            shutdown.clone(),
        );
        tokio::spawn(
            async move { keel::jobs::worker::run(jobs, handlers, &config, shutdown).await },
        )
    };
    let producer = Jobs::new(&config, db.clone());
    let mut ids = HashMap::new();
    for name in ["cancelled", "kept"] {
        let id = producer
            .enqueue(NewJob::new("test.flaky", json!({ "name": name })))
            .await
            .expect("enqueued");
        ids.insert(name, id.to_string());
    }
    let cancelled = ids["cancelled"].clone();
    eventually(20, "the first attempt to fail", || async {
        let job = job(app, &cancelled).await;
        (job["state"] == "queued" && job["attempts"] == 1).then_some(())
    })
    .await;
    let response = app
        .client
        .post(app.url(&format!("/jobs/{cancelled}/cancel")))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["id"], cancelled.as_str());
    assert_eq!(body["state"], "cancelled");
    assert_eq!(body["attempts"], 1);
    assert!(body["finished_at"].is_string(), "{body}");
    assert_eq!(job(app, &cancelled).await, body);
    let run_at: chrono::DateTime<chrono::Utc> = body["run_at"]
        .as_str()
        .expect("run_at")
        .parse()
        .expect("RFC 3339");

    // A message for it (a broker's retry, a duplicate) claims nothing.
    let store = keel::jobs::store::JobStore::new(db.clone());
    let id: uuid::Uuid = cancelled.parse().expect("uuid");
    let claim = store
        .claim_id(id, 1, chrono::Duration::seconds(30))
        .await
        .expect("claim");
    assert!(claim.is_none(), "a cancelled job was claimed");

    // The other job retries and succeeds; well after the cancelled one was due, it has
    // still run once only.
    let kept = ids["kept"].clone();
    eventually(30, "the kept job to succeed", || async {
        (job(app, &kept).await["state"] == "succeeded").then_some(())
    })
    .await;
    let wait = (run_at - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(3);
    tokio::time::sleep(wait).await;
    let after = job(app, &cancelled).await;
    assert_eq!(after["state"], "cancelled");
    assert_eq!(after["attempts"], 1);
    {
        let runs = runs.lock().expect("lock");
        assert_eq!(runs.get("cancelled"), Some(&1), "{runs:?}");
        assert_eq!(runs.get("kept"), Some(&2), "{runs:?}");
    }
    let listed = list_jobs(app, "?state=cancelled").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], cancelled.as_str());

    // Only a queued job: again, or a finished one, is a conflict.
    for id in [&cancelled, &kept] {
        let response = app
            .client
            .post(app.url(&format!("/jobs/{id}/cancel")))
            .send()
            .await
            .expect("sent");
        assert_eq!(
            problem(response, 409).await["type"],
            "/problems/job-not-queued"
        );
    }
    assert_eq!(job(app, &kept).await["state"], "succeeded");
    let unknown = uuid::Uuid::now_v7();
    let response = app
        .client
        .post(app.url(&format!("/jobs/{unknown}/cancel")))
        .send()
        .await
        .expect("sent");
    problem(response, 404).await;
    let response = app
        .client
        .post(app.url("/jobs/not-a-uuid/cancel"))
        .send()
        .await
        .expect("sent");
    problem(response, 422).await;
    // Without a worker, a registration's e-mails stay queued.
    shutdown.begin();
    worker.await.expect("worker stops");
    register(app, "user@example.com").await;
    let token = common::login(&app.anon, app.addr, "user@example.com", PASSWORD).await;
    let queued = list_jobs(app, "?state=queued").await;
    let some_queued = queued
        .first()
        .and_then(|job| job["id"].as_str())
        .expect("the registration's e-mails wait: no worker runs them")
        .to_owned();
    let response = app
        .anon
        .post(app.url(&format!("/jobs/{some_queued}/cancel")))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    problem(response, 403).await;
    let response = app
        .anon
        .post(app.url(&format!("/jobs/{some_queued}/cancel")))
        .send()
        .await
        .expect("sent");
    problem(response, 401).await;
    assert_eq!(job(app, &some_queued).await["state"], "queued");
    db.close().await;
    setup.finish().await;
}
