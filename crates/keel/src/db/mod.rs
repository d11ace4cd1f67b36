//! The database: SQLite by default, PostgreSQL when `DATABASE_URL` says so.
//!
//! Features keep their own SQL and run it through [`Db`]: both backends accept the same
//! `$N` placeholders, parameters are anything that both drivers can bind ([`Param`]) and
//! rows are read by column name ([`Row`]), so each statement is written once. SQLite goes
//! through sqlx; PostgreSQL through tokio-postgres, whose pipelining the benchmark chose
//! (see [`postgres`]).

pub mod batch;
mod gauges;
mod notify;
mod postgres;
mod span;

use std::{fmt::Display, str::FromStr, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::{
    Arguments, Connection, Sqlite, SqlitePool,
    error::BoxDynError,
    migrate::Migrator,
    postgres::PgConnection,
    sqlite::{
        SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
        SqliteSynchronous,
    },
};
use tokio_postgres::{error::SqlState, types::ToSql};
use tracing::Instrument;

pub use postgres::Postgres;

use crate::{config::Config, metrics::QueryTimer};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A database on one of the supported backends.
#[derive(Debug, Clone)]
pub enum Db {
    /// The embedded default, and what times its statements.
    Sqlite(SqlitePool, QueryTimer),
    /// PostgreSQL, for production and several instances.
    Postgres {
        /// The connections.
        pg: Postgres,
        /// Where it is, for the migrator (which runs on a connection of its own).
        url: secrecy::SecretString,
        /// What times its statements.
        timer: QueryTimer,
    },
}

/// How many connections a pool holds, read for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open, lent out or idle.
    pub open: usize,
    /// Open connections waiting in the pool.
    pub idle: usize,
    /// Connections the pool opens at most.
    pub max: usize,
    /// Tasks waiting for a connection (0 when the pool does not say).
    pub waiting: usize,
}

/// The current time as the database keeps it: to the microsecond, PostgreSQL's precision,
/// so what a write answers is exactly what a later read returns. Every timestamp keel
/// stores comes from here.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

/// A failed statement, on either backend.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite (or the migrator) failed.
    #[error(transparent)]
    Sqlite(#[from] sqlx::Error),
    /// PostgreSQL failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had in time.
    #[error("no database connection available: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A parameter could not be encoded.
    #[error("cannot encode a statement parameter: {0}")]
    Encode(BoxDynError),
    /// A stored value is not one the application writes.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// A statement was run on a transaction already committed.
    #[error("the transaction is already over")]
    TxDone,
    /// A statement expected to return a row returned none.
    #[error("the statement returned no row")]
    NoRow,
}

impl DbError {
    /// Whether the database could not be reached or is going away (refused or lost
    /// connections, a pool that had none to give in time, a server shutting down or
    /// starting up, a SQLite file that is locked or full): a condition that passes, which a
    /// client should retry, as opposed to a fault in keel or in the data.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Postgres(error) => {
                error.is_closed()
                    || match error.code() {
                        // Connection exceptions (class 08), and the server shutting down,
                        // crashing or starting (57P01-57P03).
                        Some(code) => {
                            code.code().starts_with("08")
                                || [
                                    SqlState::ADMIN_SHUTDOWN,
                                    SqlState::CRASH_SHUTDOWN,
                                    SqlState::CANNOT_CONNECT_NOW,
                                ]
                                .contains(code)
                        }
                        // No SQLSTATE: the connection itself failed.
                        None => true,
                    }
            }
            Self::Sqlite(error) => match error {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
                // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_FULL and their extended codes.
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    let primary = code.parse::<u32>().map_or(0, |code| code & 0xff);
                    matches!(primary, 5 | 6 | 13)
                }),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether the statement broke a unique constraint.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Self::Sqlite(sqlx::Error::Database(db)) => db.is_unique_violation(),
            Self::Postgres(error) => error.code() == Some(&SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

/// A statement parameter: a value that both drivers can bind (text, integers, UUIDs,
/// timestamps, bytes, and `Option`s of them for NULL).
pub trait Param: ToSql + Sync {
    /// Appends the value to a SQLite statement's arguments.
    fn bind_sqlite(&self, args: &mut SqliteArguments<'_>) -> Result<(), BoxDynError>;
}

impl<T> Param for T
where
    T: ToSql + Sync + Clone + sqlx::Type<Sqlite> + for<'q> sqlx::Encode<'q, Sqlite> + 'static,
{
    fn bind_sqlite(&self, args: &mut SqliteArguments<'_>) -> Result<(), BoxDynError> {
        args.add(self.clone())
    }
}

/// A column value that both drivers can read.
pub trait Column:
    for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + for<'r> tokio_postgres::types::FromSql<'r>
{
}

impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> tokio_postgres::types::FromSql<'r>
{
}

/// Names a column by name or by position, on either driver.
pub trait ColumnIndex:
    sqlx::ColumnIndex<SqliteRow> + tokio_postgres::row::RowIndex + Display
{
}

impl<I> ColumnIndex for I where
    I: sqlx::ColumnIndex<SqliteRow> + tokio_postgres::row::RowIndex + Display
{
}

/// A result row of either backend.
pub trait Row {
    /// The value of `column`.
    fn get<T: Column>(&self, column: impl ColumnIndex) -> Result<T, DbError>;
}

impl Row for SqliteRow {
    fn get<T: Column>(&self, column: impl ColumnIndex) -> Result<T, DbError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
}

impl Row for tokio_postgres::Row {
    fn get<T: Column>(&self, column: impl ColumnIndex) -> Result<T, DbError> {
        Ok(self.try_get(column)?)
    }
}

/// A type read from one result row.
pub trait FromRow: Sized {
    /// Reads `row`.
    fn from_row(row: &impl Row) -> Result<Self, DbError>;
}

/// A single-column result.
impl<T: Column> FromRow for (T,) {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok((row.get(0)?,))
    }
}

/// A two-column result.
impl<A: Column, B: Column> FromRow for (A, B) {
    fn from_row(row: &impl Row) -> Result<Self, DbError> {
        Ok((row.get(0)?, row.get(1)?))
    }
}

impl Db {
    /// Connects as configured, creating the SQLite file (and its directory) when needed.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        match &config.database_url {
            Some(url) if url.expose_secret().starts_with("postgres") => Ok(Self::Postgres {
                pg: Postgres::connect(url.expose_secret(), config.database_max_connections).await?,
                url: url.clone(),
                timer: QueryTimer::default(),
            }),
            Some(url) => {
                let options = SqliteConnectOptions::from_str(url.expose_secret())
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
        Ok(Self::Sqlite(pool, QueryTimer::default()))
    }

    /// The same database, its statements timed by `timer`.
    pub fn with_query_timer(self, timer: QueryTimer) -> Self {
        match self {
            Self::Sqlite(pool, _) => Self::Sqlite(pool, timer),
            Self::Postgres { pg, url, .. } => Self::Postgres { pg, url, timer },
        }
    }

    /// The span of `sql` on this database.
    fn span(&self, sql: &str) -> tracing::Span {
        span::query(
            match self {
                Self::Sqlite(..) => "sqlite",
                Self::Postgres { .. } => "postgresql",
            },
            sql,
        )
    }

    fn timer(&self) -> &QueryTimer {
        match self {
            Self::Sqlite(_, timer) | Self::Postgres { timer, .. } => timer,
        }
    }

    /// The pool's connections right now.
    pub fn pool_status(&self) -> PoolStatus {
        match self {
            Self::Sqlite(pool, _) => PoolStatus {
                open: usize::try_from(pool.size()).unwrap_or(usize::MAX),
                idle: pool.num_idle(),
                max: usize::try_from(pool.options().get_max_connections()).unwrap_or(usize::MAX),
                waiting: 0,
            },
            Self::Postgres { pg, .. } => pg.pool_status(),
        }
    }

    /// The backend's name, for logs and readiness.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(..) => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(pool, _) => SQLITE_MIGRATIONS.run(pool).await,
            Self::Postgres { url, .. } => {
                let mut conn = PgConnection::connect(url.expose_secret())
                    .await
                    .context("cannot connect to PostgreSQL to migrate")?;
                let result = POSTGRES_MIGRATIONS.run(&mut conn).await;
                // Closing politely only saves the server a log line; a failure here changes nothing.
                let _ = conn.close().await;
                result
            }
        }
        .context("migration failed")
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.execute("SELECT 1", &[]).await.map(drop)
    }

    /// Whether every migration this build knows of has been applied.
    pub async fn is_migrated(&self) -> Result<bool, DbError> {
        let migrator = match self {
            Self::Sqlite(..) => &SQLITE_MIGRATIONS,
            Self::Postgres { .. } => &POSTGRES_MIGRATIONS,
        };
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let (applied,): (Option<i64>,) = self
            .fetch_one(
                "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
                &[],
            )
            .await?;
        Ok(applied.unwrap_or(0) >= latest)
    }

    /// Runs `sql` and returns how many rows it changed.
    pub async fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        self.timer()
            .time(async {
                match self {
                    Self::Sqlite(pool, _) => Ok(sqlx::query_with(sql, sqlite_args(params)?)
                        .execute(pool)
                        .await?
                        .rows_affected()),
                    Self::Postgres { pg, .. } => pg.execute(sql, &pg_params(params)).await,
                }
            })
            .instrument(self.span(sql))
            .await
    }

    /// Runs `sql` and reads every row it returns.
    pub async fn fetch_all<T: FromRow>(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> Result<Vec<T>, DbError> {
        self.timer()
            .time(async {
                match self {
                    Self::Sqlite(pool, _) => sqlx::query_with(sql, sqlite_args(params)?)
                        .fetch_all(pool)
                        .await?
                        .iter()
                        .map(T::from_row)
                        .collect(),
                    Self::Postgres { pg, .. } => pg
                        .query(sql, &pg_params(params))
                        .await?
                        .iter()
                        .map(T::from_row)
                        .collect(),
                }
            })
            .instrument(self.span(sql))
            .await
    }

    /// Runs `sql` and reads its first row, if any.
    pub async fn fetch_optional<T: FromRow>(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> Result<Option<T>, DbError> {
        self.timer()
            .time(async {
                match self {
                    Self::Sqlite(pool, _) => sqlx::query_with(sql, sqlite_args(params)?)
                        .fetch_optional(pool)
                        .await?
                        .as_ref()
                        .map(T::from_row)
                        .transpose(),
                    Self::Postgres { pg, .. } => pg
                        .query(sql, &pg_params(params))
                        .await?
                        .first()
                        .map(T::from_row)
                        .transpose(),
                }
            })
            .instrument(self.span(sql))
            .await
    }

    /// Runs `sql` and reads its one row; a statement that returns none is an error.
    pub async fn fetch_one<T: FromRow>(
        &self,
        sql: &str,
        params: &[&dyn Param],
    ) -> Result<T, DbError> {
        self.fetch_optional(sql, params)
            .await?
            .ok_or(DbError::NoRow)
    }

    /// Starts a transaction: its statements commit together with [`Tx::commit`], or not at
    /// all. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so that it never
    /// fails half-way for another writer.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        let timer = self.timer();
        let inner = timer
            .time(async {
                Ok::<_, DbError>(match self {
                    Self::Sqlite(pool, _) => {
                        TxInner::Sqlite(Some(pool.begin_with("BEGIN IMMEDIATE").await?))
                    }
                    Self::Postgres { pg, .. } => TxInner::Postgres(Some(pg.begin().await?)),
                })
            })
            .await?;
        Ok(Tx(inner, timer.clone()))
    }

    /// Closes every connection, waiting for checked-out SQLite ones to come back.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool, _) => pool.close().await,
            Self::Postgres { pg, .. } => pg.close(),
        }
    }
}

/// A transaction of [`Db::begin`], and what times its statements. Dropped without
/// [`Tx::commit`], it rolls back.
pub struct Tx(TxInner, QueryTimer);

/// Each side is `None` once the transaction is over.
enum TxInner {
    Sqlite(Option<sqlx::Transaction<'static, Sqlite>>),
    Postgres(Option<deadpool_postgres::Object>),
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            TxInner::Sqlite(_) => "Tx(sqlite)",
            TxInner::Postgres(_) => "Tx(postgres)",
        })
    }
}

impl Tx {
    /// Runs `sql` and returns how many rows it changed.
    pub async fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        let span = span::query(inner_system(&self.0), sql);
        let Self(inner, timer) = self;
        timer
            .time(async {
                match inner {
                    TxInner::Sqlite(tx) => {
                        let tx = tx.as_mut().ok_or(DbError::TxDone)?;
                        Ok(sqlx::query_with(sql, sqlite_args(params)?)
                            .execute(&mut **tx)
                            .await?
                            .rows_affected())
                    }
                    TxInner::Postgres(client) => {
                        let client = client.as_ref().ok_or(DbError::TxDone)?;
                        let statement = client.prepare_cached(sql).await?;
                        Ok(client.execute(&statement, &pg_params(params)).await?)
                    }
                }
            })
            .instrument(span)
            .await
    }

    /// Runs `sql` and reads every row it returns.
    pub async fn fetch_all<T: FromRow>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
    ) -> Result<Vec<T>, DbError> {
        let span = span::query(inner_system(&self.0), sql);
        let Self(inner, timer) = self;
        timer
            .time(async {
                match inner {
                    TxInner::Sqlite(tx) => {
                        let tx = tx.as_mut().ok_or(DbError::TxDone)?;
                        sqlx::query_with(sql, sqlite_args(params)?)
                            .fetch_all(&mut **tx)
                            .await?
                            .iter()
                            .map(T::from_row)
                            .collect()
                    }
                    TxInner::Postgres(client) => {
                        let client = client.as_ref().ok_or(DbError::TxDone)?;
                        let statement = client.prepare_cached(sql).await?;
                        client
                            .query(&statement, &pg_params(params))
                            .await?
                            .iter()
                            .map(T::from_row)
                            .collect()
                    }
                }
            })
            .instrument(span)
            .await
    }

    /// Runs `sql` and reads its first row, if any.
    pub async fn fetch_optional<T: FromRow>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
    ) -> Result<Option<T>, DbError> {
        Ok(self.fetch_all(sql, params).await?.into_iter().next())
    }

    /// Makes every statement of the transaction durable, together.
    pub async fn commit(mut self) -> Result<(), DbError> {
        let Self(inner, timer) = &mut self;
        timer
            .time(async {
                match inner {
                    TxInner::Sqlite(tx) => Ok(tx.take().ok_or(DbError::TxDone)?.commit().await?),
                    TxInner::Postgres(client) => {
                        let client = client.take().ok_or(DbError::TxDone)?;
                        if let Err(error) = client.batch_execute("COMMIT").await {
                            // The connection's state is unknown: never lend it again.
                            drop(deadpool_postgres::Object::take(client));
                            return Err(error.into());
                        }
                        Ok(())
                    }
                }
            })
            .await
    }
}

/// The OpenTelemetry name of a transaction's backend.
fn inner_system(inner: &TxInner) -> &'static str {
    match inner {
        TxInner::Sqlite(_) => "sqlite",
        TxInner::Postgres(_) => "postgresql",
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // sqlx rolls its own transactions back when dropped. A PostgreSQL connection is
        // rolled back before it goes back to the pool, or closed (which aborts the
        // transaction on the server) when that cannot be done.
        let TxInner::Postgres(client) = &mut self.0 else {
            return;
        };
        let Some(client) = client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

/// The placeholders of a multi-row VALUES list: `($1, $2), ($3, $4)` for 2 rows of 2 columns.
pub fn values(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sqlite_args<'q>(params: &[&dyn Param]) -> Result<SqliteArguments<'q>, DbError> {
    let mut args = SqliteArguments::default();
    for param in params {
        param.bind_sqlite(&mut args).map_err(DbError::Encode)?;
    }
    Ok(args)
}

fn pg_params<'a>(params: &[&'a dyn Param]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| *p as &(dyn ToSql + Sync)).collect()
}

#[cfg(test)]
mod tests {
    use super::values;

    #[test]
    fn values_numbers_placeholders_row_by_row() {
        assert_eq!(values(1, 3), "($1, $2, $3)");
        assert_eq!(values(2, 2), "($1, $2), ($3, $4)");
    }
}
