//! PostgreSQL stopped and started again under load. While it is down, every answer that
//! needs it is a `503` problem with `Retry-After` (never a `500`), `/readyz` is `503` naming
//! the database and `/livez` stays `200`; once it accepts connections again keel serves
//! within a second, with no restart, and every acknowledged write reads back.
//!
//! The test runs a PostgreSQL cluster of its own (`initdb` in a temporary directory, on a
//! free port), so stopping it disturbs no other test. It skips with one line when
//! PostgreSQL's server programs are missing, unless `KEEL_REQUIRE_SERVICES=1`.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Backend, free_port, services_required, spawn_with};
use secrecy::SecretString;
use serde_json::{Value, json};

/// Clients writing and reading at once.
const CLIENTS: usize = 4;

/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(3);

/// The newest installed PostgreSQL's programs (`initdb`, `pg_ctl`).
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// A PostgreSQL cluster in a temporary directory, stopped when dropped.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// PostgreSQL refuses to run as root: then its programs run as `postgres`.
    as_postgres: bool,
}

impl Cluster {
    fn create(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status()
                .expect("chown runs");
            assert!(
                status.success(),
                "cannot hand the cluster's directory to postgres"
            );
        }
        let cluster = Self {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        let data = cluster.data().display().to_string();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .output()
            .expect("PostgreSQL program runs");
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(&self) {
        let data = self.data().display().to_string();
        let log = self.dir.path().join("postgres.log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    fn stop(&self) {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let path = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        };
    }
}

/// One answer the load got: when, to what, and how.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    status: u16,
    retry_after: bool,
    problem_json: bool,
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    answers: Vec<Answer>,
    /// Users whose creation was answered `201`.
    created: Vec<String>,
}

async fn client_loop(
    client: reqwest::Client,
    base: String,
    worker: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let email = format!("load-{worker}-{n}@example.com");
        let answer = client
            .post(format!("{base}/users"))
            .json(&json!({"email": email, "name": "Under Load"}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let Ok(response) = answer else {
            continue;
        };
        let answer = Answer {
            at: Instant::now(),
            status: response.status().as_u16(),
            retry_after: response.headers().contains_key("retry-after"),
            problem_json: response
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/problem+json"),
        };
        let created = if answer.status == 201 {
            response
                .json::<Value>()
                .await
                .ok()
                .and_then(|user| user["id"].as_str().map(str::to_owned))
        } else {
            None
        };
        {
            let mut seen = seen.lock().expect("not poisoned");
            seen.answers.push(answer);
            seen.created.extend(created);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_is_a_503_and_keel_recovers_by_itself() {
    let Some(bin) = postgres_bin() else {
        assert!(
            !services_required(),
            "KEEL_REQUIRE_SERVICES=1 but PostgreSQL's server programs (initdb, pg_ctl) are missing"
        );
        eprintln!("skipping: PostgreSQL's server programs (initdb, pg_ctl) are missing");
        return;
    };
    let cluster = Cluster::create(bin);
    cluster.start();
    let url = cluster.url();
    // The harness's PostgreSQL backend makes a database on the shared server; this one is
    // the test's own, named by the URL.
    let app = spawn_with(Backend::Sqlite, |config| {
        config.database_url = Some(SecretString::from(url));
    })
    .await
    .expect("keel starts on its own PostgreSQL");
    let base = format!("http://{}", app.addr);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|worker| {
            tokio::spawn(client_loop(
                app.client.clone(),
                base.clone(),
                worker,
                Arc::clone(&stop),
                Arc::clone(&seen),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.stop();
    let down = Instant::now();
    tokio::time::sleep(OUTAGE / 2).await;
    let live = app.anon.get(app.url("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200, "/livez during the outage");
    let ready = app.anon.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "/readyz during the outage");
    let detail: Value = ready.json().await.unwrap();
    assert!(
        detail["detail"].as_str().unwrap_or("").contains("database"),
        "/readyz names the database: {detail}"
    );
    tokio::time::sleep(OUTAGE / 2).await;
    cluster.start();
    let up = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let count = |from: Instant, to: Instant, status: u16| {
        seen.answers
            .iter()
            .filter(|a| a.at >= from && a.at < to && a.status == status)
            .count()
    };
    let far = up + Duration::from_secs(60);
    let during: Vec<&Answer> = seen
        .answers
        .iter()
        .filter(|a| a.at >= down && a.at < up)
        .collect();
    let first_after = seen
        .answers
        .iter()
        .find(|a| a.at >= up && a.status == 201)
        .map(|a| a.at.duration_since(up));
    println!(
        "before the outage: {} created; during it ({:?}): {} answers, {} x 503, {} x 500; \
         after: {} created, the first {:?} after PostgreSQL accepted connections",
        count(start, down, 201),
        up.duration_since(down),
        during.len(),
        count(down, up, 503),
        count(down, up, 500),
        count(up, far, 201),
        first_after,
    );
    let server_errors: Vec<_> = seen
        .answers
        .iter()
        .filter(|a| a.status >= 500 && a.status != 503)
        .collect();
    assert!(
        server_errors.is_empty(),
        "answers other than 503: {server_errors:?}"
    );
    assert!(
        !during.is_empty(),
        "the clients got no answer during the outage"
    );
    for answer in &during {
        if answer.status != 201 {
            assert_eq!(answer.status, 503, "{answer:?}");
            assert!(answer.retry_after && answer.problem_json, "{answer:?}");
        }
    }
    let first_after = first_after.expect("keel creates users again after the outage");
    assert!(
        first_after <= Duration::from_secs(1),
        "keel served again {first_after:?} after PostgreSQL accepted connections"
    );
    for id in &seen.created {
        let response = app.get(&format!("/users/{id}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "acknowledged user {id} is lost");
    }
    app.stop().await.expect("keel stops");
    drop(cluster);
}
