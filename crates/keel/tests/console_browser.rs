//! The admin console (`/admin/`) end to end in a real browser: `keel serve` (the binary, as a
//! user runs it) on SQLite and on PostgreSQL, and `tests/browser/console.mjs` driving
//! headless Chromium through playwright-core against it. The script signs in and out,
//! creates and edits users (a concurrent edit is a conflict), watches the live events,
//! retries a dead welcome e-mail once an SMTP sink listens, replays a failed webhook
//! delivery, checks every page with axe-core and the keyboard, fails on console errors and
//! CSP violations, and leaves screenshots and an axe summary in
//! `target/console-screenshots/`.
//!
//! Needs Node, `npm ci` in `tests/browser` and Debian's Chromium (`/usr/bin/chromium`, or
//! `KEEL_CHROMIUM`); without them, or without PostgreSQL for the PostgreSQL run, each test
//! prints one `skipping:` line, or fails under `KEEL_REQUIRE_SERVICES=1`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    ADMIN_EMAIL, ADMIN_PASSWORD, OwnedDatabase, create_pg_database, free_port,
    process::KeelProcess, services_required,
};

/// How long the whole script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(420);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_on_sqlite() {
    run(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_on_postgres() {
    run(Db::Postgres).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    /// Names the screenshots and the axe summary.
    fn label(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The Node project that holds the scenarios.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The Chromium the script drives.
fn chromium() -> PathBuf {
    std::env::var_os("KEEL_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Where the screenshots and the axe summary go: `console-screenshots` in the target
/// directory the binary under test was built in.
fn output_dir() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_keel"));
    binary
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("console-screenshots")
}

/// What is missing for the browser tests, if anything.
fn missing_tool() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|status| status.success()) {
        return Some("Node.js is not installed (node)".to_owned());
    }
    let modules = browser_dir().join("node_modules");
    for package in ["playwright-core", "axe-core"] {
        if !modules.join(package).join("package.json").is_file() {
            return Some(format!(
                "{} has no {package} (run `npm ci` in crates/keel/tests/browser)",
                modules.display()
            ));
        }
    }
    let chromium = chromium();
    if !chromium.is_file() {
        return Some(format!(
            "Chromium is not installed at {} (apt-get install chromium)",
            chromium.display()
        ));
    }
    None
}

async fn run(db: Db) {
    if let Some(missing) = missing_tool() {
        assert!(
            !services_required(),
            "KEEL_REQUIRE_SERVICES=1 but {missing}"
        );
        eprintln!("skipping: {missing}");
        return;
    }
    let mut database = OwnedDatabase(None);
    let mut env = keel_env();
    if db == Db::Postgres {
        let Some((name, url)) = create_pg_database().await else {
            return;
        };
        database.0 = Some(name);
        env.push(("DATABASE_URL".to_owned(), url));
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = free_port();
    // Nothing listens here until the welcome-e-mail scenario starts its sink.
    let smtp_port = free_port();
    env.extend([
        ("PORT".to_owned(), port.to_string()),
        ("KEEL_DATA_DIR".to_owned(), dir.path().display().to_string()),
        (
            "KEEL_PUBLIC_URL".to_owned(),
            format!("http://127.0.0.1:{port}"),
        ),
        (
            "SMTP_URL".to_owned(),
            format!("smtp://127.0.0.1:{smtp_port}"),
        ),
    ]);
    let mut keel = KeelProcess::spawn(
        &format!("console-{}", db.label()),
        &["serve"],
        &env,
        dir.path().join("keel.log"),
    );
    keel.wait_until_ready(&format!("http://127.0.0.1:{port}/readyz"))
        .await;

    let output = output_dir();
    std::fs::create_dir_all(&output).expect("screenshot directory");
    let (success, log) = run_script(
        &[
            ("KEEL_URL", format!("http://127.0.0.1:{port}")),
            ("KEEL_ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
            ("KEEL_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
            ("KEEL_SMTP_PORT", smtp_port.to_string()),
            ("KEEL_DB_LABEL", db.label().to_owned()),
            ("KEEL_OUTPUT_DIR", output.display().to_string()),
            ("KEEL_CHROMIUM", chromium().display().to_string()),
        ],
        dir.path(),
    )
    .await;
    println!("{log}");
    assert!(
        success,
        "the console scenarios failed on {} (their output is above; keel's log follows)",
        db.label()
    );
    keel.terminate();
    let status = keel.wait_for_exit(30).await;
    assert!(status.success(), "keel exited with {status}");
}

/// The settings of the keel under test, but for its port, data directory, database and
/// SMTP server.
fn keel_env() -> Vec<(String, String)> {
    [
        ("HOST", "127.0.0.1"),
        ("RUST_LOG", "info"),
        ("KEEL_ENVIRONMENT", "development"),
        ("KEEL_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL),
        ("KEEL_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
        // Hashing as in production would make each sign-in slow.
        ("KEEL_PASSWORD_HASH_MEMORY_KIB", "1024"),
        ("KEEL_PASSWORD_HASH_ITERATIONS", "1"),
        // The script signs in often, and once with a wrong password, from one address.
        ("KEEL_RATE_LIMIT_PER_MINUTE", "0"),
        ("KEEL_AUTH_RATE_LIMIT_PER_MINUTE", "0"),
        ("KEEL_LOGIN_FAILURE_LIMIT", "0"),
        // One attempt: an e-mail sent while SMTP is down is dead at once, and a webhook
        // delivery the receiver refuses fails at once (then the console replays it).
        ("KEEL_JOBS_MAX_ATTEMPTS", "1"),
        ("KEEL_JOBS_RETRY_BASE_MS", "100"),
        ("KEEL_JOBS_POLL_MS", "100"),
        ("KEEL_EVENTS_POLL_MS", "100"),
        // The webhook receiver listens on loopback.
        ("KEEL_WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true"),
        ("KEEL_WEBHOOKS_TIMEOUT_SECS", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Runs `node console.mjs` with `vars`, its output in a file under `dir`; returns whether
/// it exited 0, and its output. Killed after [`SCRIPT_TIMEOUT`].
async fn run_script(vars: &[(&str, String)], dir: &Path) -> (bool, String) {
    let log_path = dir.join("console.mjs.log");
    let log = std::fs::File::create(&log_path).expect("script log");
    let mut child = Command::new("node")
        .arg("console.mjs")
        .current_dir(browser_dir())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("script log"))
        .stderr(log)
        .spawn()
        .expect("node starts");
    let deadline = tokio::time::Instant::now() + SCRIPT_TIMEOUT;
    let success = loop {
        if let Some(status) = child.try_wait().expect("node's status") {
            break status.success();
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut output = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !success && tokio::time::Instant::now() > deadline {
        output.push_str(&format!(
            "\nconsole.mjs killed after {} s",
            SCRIPT_TIMEOUT.as_secs()
        ));
    }
    (success, output)
}
