//! The `keel` binary: command line, configuration, durability, signals and logs.
//!
//! Every test runs the built binary in its own temporary directory, with `KEEL_DATA_DIR`
//! inside it and the developer's `PORT`, `HOST`, `DATABASE_URL`, `LOG_FORMAT`, `RUST_LOG`
//! and `KEEL_*` variables removed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tempfile::TempDir;

mod common;

const STARTUP: Duration = Duration::from_secs(15);

/// `keel` with a clean environment, running in `dir`, keeping its data in `dir/data`.
fn keel(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command.current_dir(dir);
    for name in ["PORT", "HOST", "DATABASE_URL", "LOG_FORMAT", "RUST_LOG"] {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEEL_") {
            command.env_remove(name);
        }
    }
    command.env("KEEL_DATA_DIR", dir.join("data"));
    command.env("KEEL_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL);
    command.env("KEEL_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD);
    command.env("KEEL_PASSWORD_HASH_MEMORY_KIB", "1024");
    command.env("KEEL_PASSWORD_HASH_ITERATIONS", "1");
    command
}

const ADMIN_EMAIL: &str = "admin@keel.test";
const ADMIN_PASSWORD: &str = "cli admin password";

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().expect("keel runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A client sending the bootstrap admin's access token, got from `login_url`.
async fn admin_client(client: &reqwest::Client, login_url: &str) -> reqwest::Client {
    let response = client
        .post(login_url)
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login request sent");
    assert_eq!(response.status(), 200, "bootstrap admin logs in");
    let body: Value = response.json().await.expect("token JSON");
    let token = body["access_token"].as_str().expect("access token");
    common::bearer_client(token)
}

/// A `keel serve` process, killed when dropped.
struct Running {
    child: Child,
    port: u16,
    stdout: PathBuf,
    stderr: PathBuf,
    client: reqwest::Client,
}

impl Running {
    /// Starts `command` (which must listen on `port`) and waits until `/livez` answers.
    async fn start(mut command: Command, port: u16, logs: &Path) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let stdout = logs.join(format!("stdout-{id}.log"));
        let stderr = logs.join(format!("stderr-{id}.log"));
        let child = command
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("keel starts");
        let mut running = Self {
            child,
            port,
            stdout,
            stderr,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!(
                    "keel exited early with {status}; stderr:\n{}",
                    running.stderr()
                );
            }
            if let Ok(response) = running.client.get(running.url("/livez")).send().await {
                assert_eq!(response.status(), 200);
                running.client = admin_client(&running.client, &running.url("/auth/login")).await;
                return running;
            }
            assert!(Instant::now() < deadline, "keel did not start in time");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit.
    async fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `keel serve` on a free port in `dir`, with extra environment variables.
async fn serve(dir: &Path, env: &[(&str, &str)]) -> Running {
    let port = common::free_port();
    let mut command = keel(dir);
    command.arg("serve").env("PORT", port.to_string());
    for (name, value) in env {
        command.env(name, value);
    }
    Running::start(command, port, dir).await
}

#[test]
fn help_lists_the_subcommands() {
    let dir = TempDir::new().unwrap();
    let output = run(keel(dir.path()).arg("--help"));
    assert!(output.status.success());
    let text = stdout(&output);
    for word in ["serve", "migrate", "--config"] {
        assert!(text.contains(word), "--help mentions {word}:\n{text}");
    }
}

#[test]
fn version_prints_name_and_version() {
    let dir = TempDir::new().unwrap();
    let output = run(keel(dir.path()).arg("--version"));
    assert!(output.status.success());
    assert_eq!(stdout(&output).trim(), "keel 0.1.0");
}

/// Runs `keel` with `env`, expecting exit code 2 and a message naming `setting`.
fn assert_config_error(dir: &Path, env: &[(&str, &str)], args: &[&str], setting: &str) {
    let mut command = keel(dir);
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = run(&mut command);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{env:?} {args:?}: {}",
        stderr(&output)
    );
    let message = stderr(&output);
    assert!(
        message.contains(setting),
        "{env:?} {args:?}: the error names {setting}: {message}"
    );
    assert!(
        !dir.join("data").join("keel.db").exists(),
        "nothing starts on a bad configuration"
    );
}

#[test]
fn a_bad_port_exits_2() {
    let dir = TempDir::new().unwrap();
    assert_config_error(dir.path(), &[("PORT", "notanumber")], &[], "PORT");
    assert_config_error(dir.path(), &[("PORT", "70000")], &["serve"], "PORT");
}

#[test]
fn a_zero_body_limit_exits_2() {
    let dir = TempDir::new().unwrap();
    assert_config_error(
        dir.path(),
        &[("KEEL_BODY_LIMIT", "0")],
        &[],
        "KEEL_BODY_LIMIT",
    );
}

#[test]
fn an_unsupported_database_url_exits_2() {
    let dir = TempDir::new().unwrap();
    assert_config_error(
        dir.path(),
        &[("DATABASE_URL", "mysql://x")],
        &["migrate"],
        "DATABASE_URL",
    );
}

#[test]
fn a_missing_config_file_exits_2() {
    let dir = TempDir::new().unwrap();
    assert_config_error(
        dir.path(),
        &[],
        &["--config", "missing.toml"],
        "missing.toml",
    );
}

#[test]
fn config_file_errors_name_the_setting() {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("keel.toml"), "body_limit = 0\n").unwrap();
    assert_config_error(
        dir.path(),
        &[],
        &["--config", "keel.toml"],
        "KEEL_BODY_LIMIT",
    );
    fs::write(dir.path().join("bad-port.toml"), "port = \"http\"\n").unwrap();
    assert_config_error(dir.path(), &[], &["--config", "bad-port.toml"], "PORT");
    // The environment overrides the file.
    fs::write(dir.path().join("ok.toml"), "body_limit = 0\n").unwrap();
    assert_config_error(
        dir.path(),
        &[("KEEL_BODY_LIMIT", "1024"), ("PORT", "notanumber")],
        &["--config", "ok.toml"],
        "PORT",
    );
}

#[tokio::test]
async fn config_file_settings_are_honoured() {
    let dir = TempDir::new().unwrap();
    let port = common::free_port();
    fs::write(
        dir.path().join("keel.toml"),
        format!("port = {port}\nbody_limit = 1024\n"),
    )
    .unwrap();
    let mut command = keel(dir.path());
    command.args(["--config", "keel.toml", "serve"]);
    let app = Running::start(command, port, dir.path()).await;

    let post = |body: String| {
        app.client
            .post(app.url("/users"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let small = json!({"email": "ada@example.com", "name": "Ada Lovelace"}).to_string();
    let big = format!("{small}{}", " ".repeat(2048));
    let response = post(big).await.unwrap();
    assert_eq!(response.status(), 413, "body_limit from the file applies");
    let response = post(small).await.unwrap();
    assert_eq!(response.status(), 201);
}

#[test]
fn migrate_creates_the_database() {
    let dir = TempDir::new().unwrap();
    let database = dir.path().join("data").join("keel.db");
    assert!(!database.exists());
    let output = run(keel(dir.path()).arg("migrate"));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(database.is_file(), "{} exists", database.display());
    let output = run(keel(dir.path()).arg("migrate"));
    assert!(output.status.success(), "migrating twice is fine");
}

#[tokio::test]
async fn committed_users_survive_a_kill() {
    let dir = TempDir::new().unwrap();
    let mut first = serve(dir.path(), &[]).await;
    let response = first
        .client
        .post(first.url("/users"))
        .header("content-type", "application/json")
        .body(json!({"email": "ada@example.com", "name": "Ada Lovelace"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let user: Value = response.json().await.unwrap();

    first.child.kill().unwrap(); // SIGKILL: no shutdown code runs.
    let status = first.wait(Duration::from_secs(5)).await.expect("killed");
    assert!(!status.success());
    drop(first);

    let second = serve(dir.path(), &[]).await;
    let response = second
        .client
        .get(second.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), user);
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let dir = TempDir::new().unwrap();
    let mut app = serve(dir.path(), &[]).await;
    let response = app.client.get(app.url("/users")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(app.child.id().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let status = app
        .wait(Duration::from_secs(5))
        .await
        .expect("keel exits within 5 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", app.stderr());
}

#[tokio::test]
async fn json_logs_describe_each_request() {
    let dir = TempDir::new().unwrap();
    let app = serve(dir.path(), &[("LOG_FORMAT", "json"), ("RUST_LOG", "info")]).await;
    let request_id = "cli-log-test-42";
    let response = app
        .client
        .get(app.url("/users"))
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Log lines go to standard output, one JSON object each.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = app
            .stdout()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| {
                line.to_string().contains(request_id) && line["message"] == "request finished"
            });
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no JSON \"request finished\" line on stdout:\n{}\nstderr:\n{}",
            app.stdout(),
            app.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The documented schema: every key at the top level.
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["http.route"], "/users", "{line}");
    assert_eq!(line["request_id"], request_id, "{line}");
    assert_eq!(line["http.request.method"], "GET", "{line}");
    assert_eq!(line["span"], "request", "{line}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str().unwrap_or_default())
            .is_ok(),
        "{line}"
    );
    assert!(
        !app.stderr().contains("request finished"),
        "logs go to stdout only"
    );
}

#[tokio::test]
async fn an_admin_changes_the_log_filter_while_keel_runs() {
    let dir = TempDir::new().unwrap();
    let app = serve(dir.path(), &[("LOG_FORMAT", "json"), ("RUST_LOG", "info")]).await;
    let lines_with = |request_id: &str| {
        app.stdout()
            .lines()
            .filter(|line| line.contains(request_id) && line.contains("request finished"))
            .count()
    };
    let get = |request_id: &'static str| {
        app.client
            .get(app.url("/livez"))
            .header("x-request-id", request_id)
            .send()
    };

    let response = app
        .client
        .get(app.url("/admin/log-filter"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["filter"], "info");
    get("before-the-change").await.unwrap();

    // Not a filter: 422 naming the field, and the filter in force stays.
    let response = app
        .client
        .put(app.url("/admin/log-filter"))
        .json(&json!({"filter": "keel=loud"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        common::validation_errors(response).await,
        common::expected(&[("body", "/filter", "invalid_filter")])
    );

    let response = app
        .client
        .put(app.url("/admin/log-filter"))
        .json(&json!({"filter": "warn,keel::jobs=debug"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["filter"],
        "warn,keel::jobs=debug"
    );
    get("after-the-change").await.unwrap();

    // Anonymous and plain users may not.
    let response = reqwest::Client::new()
        .put(app.url("/admin/log-filter"))
        .json(&json!({"filter": "trace"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let deadline = Instant::now() + Duration::from_secs(5);
    while lines_with("before-the-change") == 0 {
        assert!(Instant::now() < deadline, "no line for the first request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The change itself is logged at WARN, which the new filter lets through.
    while !app.stdout().contains("log filter changed") {
        assert!(
            Instant::now() < deadline,
            "the change is not logged:\n{}",
            app.stdout()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines_with("after-the-change"), 0, "INFO lines stopped");
}

/// `keel admin create` with the password piped in.
fn admin_create(dir: &Path, email: &str, password: &str) -> Output {
    use std::io::Write;
    let mut child = keel(dir)
        .args(["admin", "create", "--email", email, "--name", "Root Admin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel runs");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{password}").unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn admin_create_makes_an_admin_who_can_log_in() {
    let dir = TempDir::new().unwrap();
    let output = admin_create(dir.path(), "root@example.com", "root password 0123");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("created admin"),
        "{}",
        stdout(&output)
    );
    assert!(!stdout(&output).contains("root password"));

    let again = admin_create(dir.path(), "ROOT@example.com", "root password 0123");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let short = admin_create(dir.path(), "other@example.com", "short");
    assert_eq!(short.status.code(), Some(1));
    assert!(
        stderr(&short).contains("password: must be at least 12"),
        "{}",
        stderr(&short)
    );

    let app = serve(dir.path(), &[]).await;
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("authorization", "")
        .json(&json!({"email": "root@example.com", "password": "root password 0123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = app
        .client
        .get(app.url("/users/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["email"].as_str(), me["role"].as_str()),
        (Some("root@example.com"), Some("admin"))
    );
}

#[test]
fn production_refuses_generated_keys_and_placeholder_secrets() {
    let dir = TempDir::new().unwrap();
    let output = run(keel(dir.path()).env("KEEL_ENVIRONMENT", "production"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("KEEL_JWT_PRIVATE_KEY_FILE"),
        "{}",
        stderr(&output)
    );
    assert!(
        !dir.path().join("data/jwt-ed25519.pem").exists(),
        "no key was generated"
    );
    assert_config_error(
        dir.path(),
        &[
            ("KEEL_ENVIRONMENT", "production"),
            ("KEEL_BOOTSTRAP_ADMIN_PASSWORD", "changeme"),
        ],
        &[],
        "KEEL_BOOTSTRAP_ADMIN_PASSWORD",
    );
    assert_config_error(
        dir.path(),
        &[
            ("KEEL_ENVIRONMENT", "production"),
            ("DATABASE_URL", "postgres://keel:password@db/keel"),
        ],
        &[],
        "DATABASE_URL",
    );
}

/// A whole session with debug logs on: the password and the refresh token appear in no log
/// line, and the password in no response.
#[tokio::test]
async fn secrets_never_reach_the_log() {
    let dir = TempDir::new().unwrap();
    let app = serve(dir.path(), &[("RUST_LOG", "debug"), ("LOG_FORMAT", "json")]).await;
    let password = "Zebra-Quartz-7781-password";
    let post = |path: &str, body: Value| {
        app.client
            .post(app.url(path))
            .header("authorization", "")
            .json(&body)
            .send()
    };
    let mut answers = String::new();
    let registered = post(
        "/auth/register",
        json!({"email": "ada@example.com", "name": "Ada", "password": password}),
    )
    .await
    .unwrap();
    assert_eq!(registered.status(), 201);
    let registered: Value = registered.json().await.unwrap();
    answers.push_str(&registered.to_string());
    let failed = post(
        "/auth/login",
        json!({"email": "ada@example.com", "password": format!("{password}x")}),
    )
    .await
    .unwrap();
    answers.push_str(&failed.text().await.unwrap());
    let tokens: Value = post(
        "/auth/login",
        json!({"email": "ada@example.com", "password": password}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let renewed: Value = post("/auth/refresh", json!({"refresh_token": refresh}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = renewed["access_token"].as_str().unwrap();
    let changed = app
        .client
        .patch(app.url("/users/me"))
        .bearer_auth(access)
        .json(&json!({"password": "a different passphrase", "current_password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    answers.push_str(&changed.text().await.unwrap());
    // The spent refresh token again: reuse detection logs an event, not the token.
    assert_eq!(
        post("/auth/refresh", json!({"refresh_token": refresh}))
            .await
            .unwrap()
            .status(),
        401
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = format!("{}{}", app.stdout(), app.stderr());
    assert!(logs.contains("refresh.reused"), "the audit lines are there");
    for secret in [
        password,
        "a different passphrase",
        refresh.as_str(),
        "$argon2id$",
    ] {
        assert!(!logs.contains(secret), "{secret} is in the log");
        assert!(!answers.contains(secret), "{secret} is in a response");
    }
}
