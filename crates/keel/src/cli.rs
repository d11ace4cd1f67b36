//! The command line: `keel [serve]`, `keel worker`, `keel migrate`, `keel openapi`,
//! `keel healthcheck`, `keel admin create`.

use std::{
    io::BufRead,
    io::IsTerminal,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::{
    accounts::bootstrap::{CreateAdminError, create_admin},
    audit::AuditLog,
    auth::password::PasswordHasher,
    config::Config,
    db::Db,
    jobs::{Jobs, worker},
    server,
    shutdown::Shutdown,
    telemetry,
    users::store::UserStore,
};

/// keel: a production backend service.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
pub struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, short, global = true, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default); also runs jobs unless KEEL_JOBS_IN_SERVER=false.
    Serve,
    /// Run background jobs only, until SIGTERM/SIGINT (any number of these may run, on any
    /// number of machines, against the same database or RabbitMQ).
    Worker,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Print the OpenAPI document (as served at /openapi.json) and exit.
    Openapi,
    /// Ask the keel serving on this machine (at HOST:PORT) whether it is up: exit 0 when
    /// `/livez` (or `/readyz` with --ready, or --url) answers 2xx, 1 otherwise. For container
    /// HEALTHCHECKs and orchestrators' exec probes, where there is no curl.
    Healthcheck(Healthcheck),
    /// Manage accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// `keel admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an admin account. The password is read from a prompt, or from the first line
    /// of standard input when it is not a terminal.
    Create(CreateAdmin),
}

/// `keel admin create`
#[derive(Debug, Args)]
pub struct CreateAdmin {
    /// The admin's e-mail address.
    #[arg(long)]
    pub email: String,
    /// The admin's display name.
    #[arg(long)]
    pub name: String,
}

/// `keel healthcheck`
#[derive(Debug, Args)]
pub struct Healthcheck {
    /// Check `/readyz` (database reachable and migrated, not shutting down) instead of
    /// `/livez`.
    #[arg(long)]
    pub ready: bool,
    /// Seconds the answer may take.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout: u64,
    /// The URL to ask instead, such as `http://127.0.0.1:9464/metrics` for a `keel worker`,
    /// which serves no API (only its metrics listener, when `KEEL_METRICS_ADDR` is set).
    #[arg(long, conflicts_with = "ready")]
    pub url: Option<String>,
}

/// Runs the parsed command line. Returns the process exit code.
pub async fn run(cli: Cli) -> std::process::ExitCode {
    if let Some(Command::Openapi) = cli.command {
        return match server::openapi_document().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("keel: cannot render the OpenAPI document: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("keel: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Healthcheck(args)) = &cli.command {
        // No log set-up: one line on standard error at most, and the exit code.
        return healthcheck(&config, args).await;
    }
    let _log = telemetry::init(config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Worker => worker(config).await,
        Command::Migrate => migrate(config).await,
        Command::Admin(AdminCommand::Create(args)) => match admin_create(config, args).await {
            // The message says what to fix; no log line needed.
            Err(error) if error.downcast_ref::<CreateAdminError>().is_some() => {
                eprintln!("keel: {error}");
                return std::process::ExitCode::FAILURE;
            }
            other => other,
        },
        Command::Openapi | Command::Healthcheck(_) => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "keel stopped on an error");
            eprintln!("keel: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = server::Server::build(config).await?;
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        server::termination_signal().await;
        tracing::info!("shutdown signal received; draining");
        shutdown.begin();
    });
    tracing::info!(
        address = %format!("http://{}", server.local_addr()?),
        metrics = %server
            .metrics_addr()
            .map_or_else(|| "off".to_owned(), |addr| format!("http://{addr}/metrics")),
        database = server.database_backend(),
        "keel listening"
    );
    server.run().await
}

async fn worker(config: Config) -> anyhow::Result<()> {
    // A worker's metrics are its jobs', its pool's and its statements'.
    let (db, metrics_listener) = server::database_and_metrics(&config).await?;
    let metrics = metrics_listener
        .as_ref()
        .map(|listener| Arc::clone(listener.metrics()));
    let metrics_server = metrics_listener.map(|listener| listener.serve());
    let users = UserStore::new(db.clone());
    let handlers = server::job_handlers(&config, &users, &db)?;
    let jobs = Jobs::new(&config, db.clone()).with_metrics(metrics);
    let shutdown = Shutdown::default();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        server::termination_signal().await;
        tracing::info!("shutdown signal received; finishing running jobs");
        stop.begin();
    });
    tracing::info!(
        database = db.backend(),
        queue = ?jobs.backend(),
        concurrency = config.jobs_concurrency,
        "keel worker started"
    );
    worker::run(jobs, handlers, &config, shutdown).await;
    if let Some(metrics_server) = metrics_server {
        metrics_server.stop().await;
    }
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let db = Db::connect(&config).await?;
    db.migrate().await?;
    tracing::info!(database = db.backend(), "migrations applied");
    db.close().await;
    Ok(())
}

/// The address a local client reaches a listener bound to `host:port` at: the loopback
/// address of the same family when it is bound to every address.
fn local_address(host: IpAddr, port: u16) -> SocketAddr {
    let host = match host {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(host, port)
}

/// `keel healthcheck`: GET `/livez` (or `/readyz`) and map the answer to an exit code.
async fn healthcheck(config: &Config, args: &Healthcheck) -> std::process::ExitCode {
    let url = args.url.clone().unwrap_or_else(|| {
        let path = if args.ready { "/readyz" } else { "/livez" };
        format!("http://{}{path}", local_address(config.host, config.port))
    });
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("keel healthcheck: cannot make an HTTP client: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => std::process::ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("keel healthcheck: {url} answered {}", response.status());
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("keel healthcheck: {url}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reads the password: from a prompt on a terminal, else the first line of standard input.
fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("Password (12-128 characters): ")
            .context("cannot read the password");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn admin_create(config: Config, args: CreateAdmin) -> anyhow::Result<()> {
    let password = read_password()?;
    let db = Db::connect(&config).await?;
    db.migrate().await?;
    let passwords = PasswordHasher::new(&config)?;
    let users = UserStore::new(db.clone());
    let audit = AuditLog::new(db.clone());
    let created = create_admin(&users, &passwords, &audit, args.email, args.name, password).await;
    db.close().await;
    let user = created?;
    println!("created admin {} <{}>", user.id, user.email);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_on_loopback() {
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let other: IpAddr = [10, 1, 2, 3].into();
        assert_eq!(local_address(any4, 3000).to_string(), "127.0.0.1:3000");
        assert_eq!(local_address(any6, 3000).to_string(), "[::1]:3000");
        assert_eq!(local_address(other, 80).to_string(), "10.1.2.3:80");
    }
}
