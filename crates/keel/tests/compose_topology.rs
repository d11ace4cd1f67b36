//! `deploy/compose.yaml` without containers: the processes the file describes, started in
//! its order with the environment it gives them, read from the file itself so that the two
//! cannot drift apart. `keel migrate` runs first and alone; then two `keel serve` (which the
//! file keeps from running jobs), one `keel worker`, and nginx with `deploy/nginx.conf`.
//! Users registered through nginx get their welcome e-mails, sent by the worker.
//!
//! Only addresses change: compose service names, `0.0.0.0`, fixed ports and
//! `/run/secrets/...` become loopback ports, this test's PostgreSQL database, RabbitMQ queue
//! prefix, Redis key prefix, SMTP server (aiosmtpd as the mail catcher) and temporary files.
//! A value that still names a compose service after that fails the test, so a new address in
//! the file needs a rule here.
//!
//! Skips with one line when nginx, PostgreSQL, Redis, RabbitMQ or aiosmtpd is missing, unless
//! `KEEL_REQUIRE_SERVICES=1`, in which case it fails.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
};

use common::{
    Mail, OwnedDatabase, OwnedQueues, SharedServices, SmtpServer, bearer_client, eventually,
    free_port,
    process::{KeelProcess, Nginx, nginx_user_directive},
};
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

/// The compose file, relative to this crate.
const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/compose.yaml");

/// The nginx configuration the compose file mounts.
const NGINX_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nginx.conf");

/// The API instances, the worker and the migration, as the compose file names them.
const SERVE: [&str; 2] = ["keel-1", "keel-2"];
const WORKER: &str = "worker";
const MIGRATE: &str = "migrate";

/// Accounts the test registers through nginx.
const REGISTRATIONS: usize = 4;

/// The password of every account the test registers.
const PASSWORD: &str = "correct horse battery staple";

/// The subject of the welcome e-mail (`KEEL_PUBLIC_URL`'s host in the compose file).
const WELCOME_SUBJECT: &str = "Welcome to localhost";

/// The compose file, parsed, with its `<<` merge keys applied.
struct Compose {
    services: serde_yaml::Mapping,
}

impl Compose {
    fn load() -> Self {
        let text = std::fs::read_to_string(COMPOSE_FILE).expect("deploy/compose.yaml");
        let mut yaml: Yaml = serde_yaml::from_str(&text).expect("deploy/compose.yaml is YAML");
        // A merged mapping may carry merge keys of its own: apply until none is left.
        for _ in 0..8 {
            let before = yaml.clone();
            yaml.apply_merge().expect("merge keys");
            if yaml == before {
                break;
            }
        }
        let services = yaml["services"]
            .as_mapping()
            .expect("services is a mapping")
            .clone();
        Self { services }
    }

    /// The compose service whose host name `value` uses (`//name`, `@name`, `name:port`),
    /// if any: after rewriting, none may be left.
    fn host_in(&self, value: &str) -> Option<String> {
        self.services
            .keys()
            .filter_map(Yaml::as_str)
            .find_map(|name| {
                let name_re = regex::escape(name);
                let pattern = format!(r"(//|@){name_re}\b|(^|[^A-Za-z0-9_.-]){name_re}:[0-9]");
                regex::Regex::new(&pattern)
                    .expect("pattern")
                    .is_match(value)
                    .then(|| name.to_owned())
            })
    }

    fn service(&self, name: &str) -> &Yaml {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("deploy/compose.yaml has no service {name}"))
    }

    /// A service's `command` as strings.
    fn command(&self, name: &str) -> Vec<String> {
        strings(&self.service(name)["command"])
    }

    /// A service's environment, with `${NAME:-default}` replaced by its default (as compose
    /// does when NAME is unset).
    fn environment(&self, name: &str) -> BTreeMap<String, String> {
        let env = self.service(name)["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name} has an environment mapping"));
        env.iter()
            .map(|(key, value)| {
                let key = key.as_str().expect("variable name").to_owned();
                let value = match value {
                    Yaml::String(text) => interpolate_defaults(text),
                    Yaml::Number(number) => number.to_string(),
                    Yaml::Bool(flag) => flag.to_string(),
                    other => panic!("{name}: {key} has a value of an odd kind: {other:?}"),
                };
                (key, value)
            })
            .collect()
    }

    /// The names of the services `name` waits for, with the condition.
    fn depends_on(&self, name: &str) -> BTreeMap<String, String> {
        self.service(name)["depends_on"]
            .as_mapping()
            .map(|deps| {
                deps.iter()
                    .map(|(service, spec)| {
                        (
                            service.as_str().expect("service name").to_owned(),
                            spec["condition"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `CMD` of a service's healthcheck, without the leading `CMD` and the binary.
    fn keel_healthcheck(&self, name: &str) -> Vec<String> {
        let test = strings(&self.service(name)["healthcheck"]["test"]);
        assert_eq!(
            test.get(..2),
            Some(&["CMD".to_owned(), "/usr/local/bin/keel".to_owned()][..]),
            "{name}'s healthcheck runs keel: {test:?}"
        );
        test[2..].to_vec()
    }

    /// The secrets a service is given.
    fn secrets(&self, name: &str) -> Vec<String> {
        strings(&self.service(name)["secrets"])
    }
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces each `${NAME:-default}` in `text` by `default`.
fn interpolate_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("${{{inner}}} has a default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The file describes the drawing: one migration the others wait for, two API instances that
/// run no jobs, one worker, nginx in front, health-gated start order, secrets not inlined.
#[test]
fn the_compose_file_describes_the_topology() {
    let compose = Compose::load();
    assert_eq!(compose.command(MIGRATE), ["migrate"]);
    for name in SERVE {
        assert_eq!(compose.command(name), ["serve"], "{name}");
        let env = compose.environment(name);
        assert_eq!(env["KEEL_JOBS_IN_SERVER"], "false", "{name} runs no jobs");
        let drain: u64 = env["KEEL_SHUTDOWN_DRAIN_SECS"].parse().expect("a number");
        assert!(
            drain > 2,
            "{name}'s drain outlasts nginx's 2 s upstream keep-alive"
        );
        let deps = compose.depends_on(name);
        assert_eq!(deps[MIGRATE], "service_completed_successfully", "{name}");
        assert_eq!(compose.keel_healthcheck(name), ["healthcheck", "--ready"]);
    }
    assert_eq!(compose.command(WORKER), ["worker"]);
    assert_eq!(compose.environment(WORKER)["KEEL_JOBS_IN_SERVER"], "false");
    assert_eq!(
        compose.depends_on(WORKER)[MIGRATE],
        "service_completed_successfully"
    );
    assert_eq!(
        compose.depends_on(MIGRATE)["postgres"],
        "service_healthy",
        "migrations wait for PostgreSQL"
    );
    let nginx = compose.depends_on("nginx");
    for name in SERVE {
        assert_eq!(nginx[name], "service_healthy", "nginx waits for {name}");
    }
    for name in [MIGRATE, SERVE[0], SERVE[1], WORKER] {
        assert!(
            compose.secrets(name).contains(&"keel_config".to_owned()),
            "{name} gets its URLs from the keel_config secret"
        );
        let env = compose.environment(name);
        for key in ["DATABASE_URL", "AMQP_URL", "REDIS_URL"] {
            assert!(
                !env.contains_key(key),
                "{name}: {key} belongs in the keel_config secret, not in the file"
            );
        }
    }
    let nginx_conf = std::fs::read_to_string(NGINX_CONF).expect("deploy/nginx.conf");
    for name in SERVE {
        assert!(
            nginx_conf.contains(&format!("server {name}:3000;")),
            "nginx.conf balances {name}"
        );
    }
}

/// What the test runs, stopped and removed when dropped (in field order).
struct Topology {
    nginx: Nginx,
    serve: Vec<Started>,
    worker: Started,
    smtp: SmtpServer,
    nginx_port: u16,
    admin_email: String,
    admin_password: String,
    _queues: OwnedQueues,
    _database: OwnedDatabase,
    _dir: tempfile::TempDir,
}

/// A keel process with the environment it was given.
struct Started {
    process: KeelProcess,
    env: Vec<(String, String)>,
    /// The rewritten port of its metrics listener.
    metrics_port: u16,
}

/// What the environment of every keel process is rewritten to.
struct Local {
    dir: PathBuf,
    smtp_url: String,
    queue_prefix: String,
    redis_prefix: String,
}

impl Local {
    /// `service`'s environment from the compose file, with the addresses made local.
    /// Returns it with the API and metrics ports chosen.
    fn environment(
        &self,
        compose: &Compose,
        service: &str,
    ) -> (Vec<(String, String)>, Option<u16>, u16) {
        let secrets = compose.secrets(service);
        let mut api_port = None;
        let metrics_port = free_port();
        let mut env = Vec::new();
        for (key, value) in compose.environment(service) {
            let value = match key.as_str() {
                "HOST" => "127.0.0.1".to_owned(),
                "PORT" => {
                    let port = free_port();
                    api_port = Some(port);
                    port.to_string()
                }
                "KEEL_METRICS_ADDR" => format!("127.0.0.1:{metrics_port}"),
                "KEEL_DATA_DIR" => {
                    let dir = self.dir.join(service);
                    std::fs::create_dir_all(&dir).expect("data directory");
                    dir.display().to_string()
                }
                "SMTP_URL" => self.smtp_url.clone(),
                "KEEL_AMQP_QUEUE_PREFIX" => self.queue_prefix.clone(),
                "KEEL_REDIS_KEY_PREFIX" => self.redis_prefix.clone(),
                // nginx runs on loopback here.
                "KEEL_TRUSTED_PROXIES" => "127.0.0.1".to_owned(),
                // The test machine's RabbitMQ knows only guest/guest, which production
                // refuses as a placeholder secret.
                "KEEL_ENVIRONMENT" => "development".to_owned(),
                _ => match value.strip_prefix("/run/secrets/") {
                    Some(secret) => {
                        assert!(
                            secrets.contains(&secret.to_owned()),
                            "{service}: {key} names the secret {secret}, which it is not given"
                        );
                        self.dir.join("secrets").join(secret).display().to_string()
                    }
                    None => value,
                },
            };
            assert!(
                compose.host_in(&value).is_none() && !value.contains("0.0.0.0"),
                "{service}: {key}={value} still points into the compose network; \
                 teach tests/compose_topology.rs to rewrite it"
            );
            env.push((key, value));
        }
        (env, api_port, metrics_port)
    }
}

impl Topology {
    async fn start(compose: &Compose) -> Option<Self> {
        let nginx_binary = Nginx::binary()?;
        let SharedServices {
            database_url,
            redis_url: redis,
            redis_prefix,
            amqp_url: amqp,
            smtp,
            queues,
            database,
        } = SharedServices::start().await?;
        let dir = tempfile::tempdir().expect("temporary directory");

        // The secrets compose would mount under /run/secrets.
        let admin_password = format!("admin {}", uuid::Uuid::new_v4().simple());
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).expect("secrets directory");
        std::fs::write(
            secrets.join("keel_config"),
            format!(
                "database_url = {database_url:?}\namqp_url = {amqp:?}\nredis_url = {redis:?}\n\
                 bootstrap_admin_password = {admin_password:?}\n"
            ),
        )
        .expect("keel_config");
        std::fs::write(secrets.join("jwt_private_key"), signing_key_pem()).expect("key");

        let local = Local {
            dir: dir.path().to_path_buf(),
            smtp_url: smtp.url(),
            queue_prefix: queues.prefix.clone(),
            redis_prefix,
        };

        // migrate first, alone, to completion: the others depend on it.
        let (env, _, _) = local.environment(compose, MIGRATE);
        let mut migrate = KeelProcess::spawn(
            MIGRATE,
            &as_strs(&compose.command(MIGRATE)),
            &env,
            dir.path().join("migrate.log"),
        );
        let status = migrate.wait_for_exit(60).await;
        assert!(status.success(), "keel migrate: {status}");
        assert!(
            migrate.output().contains("migrations applied"),
            "{}",
            migrate.output()
        );

        let mut serve = Vec::new();
        let mut upstreams = Vec::new();
        for service in SERVE {
            let (env, port, metrics_port) = local.environment(compose, service);
            let port = port.expect("a serve instance has a PORT");
            let mut process = KeelProcess::spawn(
                service,
                &as_strs(&compose.command(service)),
                &env,
                dir.path().join(format!("{service}.log")),
            );
            process
                .wait_until_ready(&format!("http://127.0.0.1:{port}/readyz"))
                .await;
            upstreams.push((service, port));
            serve.push(Started {
                process,
                env,
                metrics_port,
            });
        }
        let (env, _, metrics_port) = local.environment(compose, WORKER);
        let mut process = KeelProcess::spawn(
            WORKER,
            &as_strs(&compose.command(WORKER)),
            &env,
            dir.path().join("worker.log"),
        );
        process
            .wait_until_ready(&format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await;
        let worker = Started {
            process,
            env,
            metrics_port,
        };

        let nginx_port = free_port();
        let nginx_dir = dir.path().join("nginx");
        let config = render_nginx_conf(compose, &nginx_dir, nginx_port, &upstreams);
        let nginx = Nginx::start(&nginx_binary, &nginx_dir, nginx_port, &config).await;
        let admin_email = compose.environment(SERVE[0])["KEEL_BOOTSTRAP_ADMIN_EMAIL"].clone();
        Some(Self {
            nginx,
            serve,
            worker,
            smtp,
            nginx_port,
            admin_email,
            admin_password,
            _queues: queues,
            _database: database,
            _dir: dir,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nginx_port)
    }
}

fn as_strs(items: &[String]) -> Vec<&str> {
    items.iter().map(String::as_str).collect()
}

/// `deploy/nginx.conf` with the test's listen address, upstreams and files.
fn render_nginx_conf(
    compose: &Compose,
    dir: &Path,
    port: u16,
    upstreams: &[(&str, u16)],
) -> String {
    let original = std::fs::read_to_string(NGINX_CONF).expect("deploy/nginx.conf");
    let dir = dir.display();
    let mut config = original
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
        .replace("/tmp/", &format!("{dir}/"))
        .replace("/dev/stderr", &format!("{dir}/error.log"))
        .replace("/dev/stdout", &format!("{dir}/access.log"));
    for (service, upstream) in upstreams {
        config = config.replace(
            &format!("server {service}:3000;"),
            &format!("server 127.0.0.1:{upstream};"),
        );
    }
    assert_ne!(config, original);
    for line in config.lines() {
        assert!(
            compose.host_in(line).is_none(),
            "nginx.conf still names a compose service: {line:?}; teach the test to rewrite it"
        );
    }
    assert!(config.contains(&format!("listen 127.0.0.1:{port};")));
    format!("{}\n{config}", nginx_user_directive())
}

/// An Ed25519 signing key as PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` makes.
fn signing_key_pem() -> String {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("random seed");
    ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(LineEnding::LF)
        .expect("PEM")
        .to_string()
}

/// The compose topology on loopback: registrations through nginx, welcome e-mails through
/// the mail catcher, every e-mail job run by the worker and none by the API instances, every
/// healthcheck command of the file passing, and a clean stop on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_topology_serves_and_its_worker_sends_the_mail() {
    let compose = Compose::load();
    let Some(topology) = Topology::start(&compose).await else {
        return;
    };
    let anon = reqwest::Client::new();
    let mut emails = Vec::new();
    for n in 0..REGISTRATIONS {
        let email = format!("compose-{n}@example.com");
        let response = anon
            .post(topology.url("/auth/register"))
            .json(&json!({"email": email, "name": "Compose Person", "password": PASSWORD}))
            .send()
            .await
            .expect("registration sent");
        assert_eq!(response.status(), 201, "registering {email} through nginx");
        emails.push(email);
    }

    // Each welcome e-mail reaches the mail catcher once.
    let smtp = &topology.smtp;
    let mails = eventually(30, "every welcome e-mail", || async {
        let mails: Vec<Mail> = smtp.messages().iter().map(|raw| Mail::parse(raw)).collect();
        let welcomed = emails.iter().all(|email| {
            mails
                .iter()
                .any(|mail| mail.to.contains(email.as_str()) && mail.subject == WELCOME_SUBJECT)
        });
        welcomed.then_some(mails)
    })
    .await;
    let welcomes = mails
        .iter()
        .filter(|mail| mail.subject == WELCOME_SUBJECT)
        .count();
    assert_eq!(welcomes, REGISTRATIONS, "one welcome e-mail per account");

    // The jobs, as the admin sees them through nginx: all welcome jobs succeeded...
    let token = common::login(
        &anon,
        format!("127.0.0.1:{}", topology.nginx_port)
            .parse()
            .expect("address"),
        &topology.admin_email,
        &topology.admin_password,
    )
    .await;
    let admin = bearer_client(&token);
    let welcome_jobs: Vec<String> = eventually(20, "the welcome jobs to succeed", || async {
        let page: Value = admin
            .get(topology.url("/jobs?kind=email.welcome&limit=100"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let jobs = page["items"].as_array()?.clone();
        (jobs.len() == REGISTRATIONS && jobs.iter().all(|job| job["state"] == "succeeded")).then(
            || {
                jobs.iter()
                    .map(|job| job["id"].as_str().expect("id").to_owned())
                    .collect()
            },
        )
    })
    .await;

    // ...each of them in the worker, none in an API instance.
    let by_worker = succeeded_jobs(&topology.worker.process.output());
    for id in &welcome_jobs {
        assert!(
            by_worker.contains(id),
            "the worker did not run welcome job {id}"
        );
    }
    for instance in &topology.serve {
        let ran = succeeded_jobs(&instance.process.output());
        assert!(
            ran.is_empty(),
            "{} ran jobs although the file sets KEEL_JOBS_IN_SERVER=false: {ran:?}",
            instance.process.name
        );
    }

    // The file's healthcheck commands pass against the running processes.
    for (service, started) in SERVE.iter().zip(&topology.serve) {
        let args = compose.keel_healthcheck(service);
        assert_healthcheck(service, &args, &started.env, started.metrics_port);
    }
    let args = compose.keel_healthcheck(WORKER);
    assert_healthcheck(
        WORKER,
        &args,
        &topology.worker.env,
        topology.worker.metrics_port,
    );
    // And fail where nothing listens.
    let nothing = format!("http://127.0.0.1:{}/livez", free_port());
    let status = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["healthcheck", "--url", &nothing, "--timeout", "2"])
        .env_clear()
        .status()
        .expect("keel healthcheck runs");
    assert_eq!(status.code(), Some(1), "healthcheck of a closed port");

    // SIGTERM: every process drains and exits 0.
    let Topology {
        nginx,
        mut serve,
        mut worker,
        ..
    } = topology;
    drop(nginx);
    for started in serve.iter().chain([&worker]) {
        started.process.terminate();
    }
    for started in serve.iter_mut().chain([&mut worker]) {
        let status = started.process.wait_for_exit(40).await;
        assert!(
            status.success(),
            "{} after SIGTERM: {status}",
            started.process.name
        );
    }
}

/// Runs `keel <args>` (a healthcheck command of the compose file) with a service's
/// environment, the file's metrics port rewritten as the environment was.
fn assert_healthcheck(service: &str, args: &[String], env: &[(String, String)], metrics: u16) {
    let args: Vec<String> = args
        .iter()
        .map(|arg| arg.replace("127.0.0.1:9464", &format!("127.0.0.1:{metrics}")))
        .collect();
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("keel healthcheck runs");
    assert!(
        output.status.success(),
        "{service}'s healthcheck {args:?}: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The ids of the jobs a process logged as succeeded, from its JSON log lines.
fn succeeded_jobs(log: &str) -> HashSet<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "job succeeded")
        .map(|line| {
            line["id"]
                .as_str()
                .unwrap_or_else(|| panic!("a job's log line carries its id: {line}"))
                .to_owned()
        })
        .collect()
}
