//! Child processes of the multi-process tests: `keel` itself (serve, worker, migrate) and
//! nginx in front of it, each with its output in a file whose last lines are printed when
//! the test fails.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A `keel` child process with its output in a log file, killed when dropped.
pub struct KeelProcess {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl KeelProcess {
    /// Starts `keel <args>` with exactly `env` (nothing inherited; a later pair overrides an
    /// earlier one of the same name), writing its output to `log`.
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)], log: PathBuf) -> Self {
        let output = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log file"))
            .stderr(output)
            .spawn()
            .expect("keel starts");
        Self {
            name: name.to_owned(),
            log,
            child,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `url` answers 200, for at most 30 s; panics if the process exits first.
    pub async fn wait_until_ready(&mut self, url: &str) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("keel {} exited at start-up ({status})", self.name);
            }
            if let Ok(response) = client.get(url).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "keel {} not ready within 30 s",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits for the process to exit, for at most `seconds`.
    pub async fn wait_for_exit(&mut self, seconds: u64) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "keel {} still runs after {seconds} s",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).expect("readable log")
    }

    /// The ids of the jobs this process logged as succeeded (text log lines).
    pub fn jobs_succeeded(&self) -> Vec<String> {
        self.output()
            .lines()
            .filter(|line| line.contains("job succeeded"))
            .map(|line| {
                let start = line.find("job{id=").expect("the job's id is logged") + 7;
                line[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
                    .collect()
            })
            .collect()
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            print_tail(&format!("keel {}", self.name), &self.log);
        }
    }
}

/// nginx as its own foreground process with everything under one directory.
pub struct Nginx {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// The nginx binary; `None` (after printing why) when there is none and it is not
    /// required.
    pub fn binary() -> Option<PathBuf> {
        let found = ["nginx", "/usr/sbin/nginx"].into_iter().find(|candidate| {
            Command::new(candidate)
                .arg("-v")
                .output()
                .is_ok_and(|out| out.status.success())
        });
        if found.is_none() {
            assert!(
                !super::services_required(),
                "KEEL_REQUIRE_SERVICES=1 but nginx is not installed (apt-get install nginx)"
            );
            eprintln!("skipping: nginx is not installed (apt-get install nginx)");
        }
        found.map(PathBuf::from)
    }

    /// Starts nginx with `config` (which listens on 127.0.0.1:`port` and keeps its files
    /// under `dir`), and waits until `/livez` answers 200 through it.
    pub async fn start(binary: &Path, dir: &Path, port: u16, config: &str) -> Self {
        std::fs::create_dir_all(dir).expect("nginx directory");
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).expect("nginx.conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Self {
            port,
            dir: dir.to_path_buf(),
            child,
        };
        let url = format!("http://127.0.0.1:{port}/livez");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.try_wait().expect("child status") {
                print_tail("nginx", &nginx.dir.join("error.log"));
                panic!("nginx exited at start-up ({status})");
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return nginx;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx not proxying within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Requests answered by the upstream on `port` that nginx logged after `since`, from an
    /// `access.log` in the `$msec $status $upstream_addr` format.
    pub fn served_since(&self, port: u16, since: SystemTime) -> usize {
        let since = since.duration_since(UNIX_EPOCH).expect("after 1970");
        let upstream = format!("127.0.0.1:{port}");
        let log = std::fs::read_to_string(self.dir.join("access.log")).expect("access log");
        log.lines()
            .filter(|line| {
                // The last upstream tried is the one that answered.
                let mut fields = line.split_whitespace();
                let at = fields.next().and_then(|t| t.parse::<f64>().ok());
                let last = line.rsplit([' ', ',']).next();
                at.is_some_and(|at| at >= since.as_secs_f64()) && last == Some(upstream.as_str())
            })
            .count()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers too.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            print_tail("nginx", &self.dir.join("error.log"));
        }
    }
}

/// The `user` directive nginx needs here: as root, its workers would otherwise switch to a
/// user that cannot reach the test's temporary directory.
pub fn nginx_user_directive() -> &'static str {
    if is_root() { "user root root;" } else { "" }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|process| process.uid() == 0)
}

/// Prints the last lines of a log, to explain a failure.
pub fn print_tail(what: &str, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("--- last lines of the {what} log ---");
    for line in &lines[lines.len().saturating_sub(40)..] {
        eprintln!("{line}");
    }
}
