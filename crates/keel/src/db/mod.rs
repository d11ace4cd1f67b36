//! The database: SQLite by default, PostgreSQL when `DATABASE_URL` says so.
//!
//! Features keep their own SQL; both backends accept the same `$N` placeholders, so most
//! statements are written once and run on either pool through [`with_pool!`].

pub mod batch;

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::{
    PgPool, SqlitePool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::config::Config;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A connection pool on one of the supported backends.
#[derive(Debug, Clone)]
pub enum Db {
    /// The embedded default.
    Sqlite(SqlitePool),
    /// PostgreSQL, for production and several instances.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds. The body is compiled
/// once per backend, so the same query builder code serves both.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

impl Db {
    /// Connects as configured, creating the SQLite file (and its directory) when needed.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let url = config
            .database_url
            .as_ref()
            .map(|u| u.expose_secret().to_owned());
        match url {
            Some(url) if url.starts_with("postgres") => {
                let options = PgConnectOptions::from_str(&url)
                    .context("DATABASE_URL is not a valid PostgreSQL URL")?;
                let pool = PgPoolOptions::new()
                    .max_connections(config.database_max_connections)
                    // A ping before every query doubles the round trips; a connection that
                    // died is dropped by the pool after its first failed query instead.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await
                    .context("cannot connect to PostgreSQL at DATABASE_URL")?;
                Ok(Self::Postgres(pool))
            }
            Some(url) => {
                let options = SqliteConnectOptions::from_str(&url)
                    .context("DATABASE_URL is not a valid SQLite URL")?;
                Self::sqlite(options, config).await
            }
            None => {
                std::fs::create_dir_all(&config.data_dir).with_context(|| {
                    format!("cannot create data directory {}", config.data_dir.display())
                })?;
                let options = SqliteConnectOptions::new().filename(config.data_dir.join("keel.db"));
                Self::sqlite(options, config).await
            }
        }
    }

    async fn sqlite(options: SqliteConnectOptions, config: &Config) -> anyhow::Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed row survives power loss, not only a killed process.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.database_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .context("cannot open the SQLite database")?;
        Ok(Self::Sqlite(pool))
    }

    /// The backend's name, for logs and readiness.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self {
            Self::Sqlite(_) => &SQLITE_MIGRATIONS,
            Self::Postgres(_) => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = self.migrator();
        with_pool!(self, pool => migrator.run(pool).await).context("migration failed")
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
    }

    /// Whether every migration this build knows of has been applied.
    pub async fn is_migrated(&self) -> Result<bool, sqlx::Error> {
        let latest = self.migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> = with_pool!(self, pool => sqlx::query_scalar(
            "SELECT MAX(version) FROM _sqlx_migrations WHERE success"
        )
        .fetch_one(pool)
        .await)?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    /// Closes every connection, waiting for checked-out ones to come back.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await);
    }
}
