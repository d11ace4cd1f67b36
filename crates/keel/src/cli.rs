//! The command line: `keel [serve]`, `keel migrate`, `keel openapi`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{config::Config, db::Db, server, telemetry};

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
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Print the OpenAPI document (as served at /openapi.json) and exit.
    Openapi,
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
    let _log = telemetry::init(config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::Openapi => Ok(()),
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
        database = server.database_backend(),
        "keel listening"
    );
    server.run().await
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let db = Db::connect(&config).await?;
    db.migrate().await?;
    tracing::info!(database = db.backend(), "migrations applied");
    db.close().await;
    Ok(())
}
