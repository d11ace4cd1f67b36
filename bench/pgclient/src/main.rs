//! PostgreSQL client strategies compared on single-row primary-key lookups, to document why
//! keel talks to PostgreSQL through a few shared tokio-postgres connections that pipeline
//! statements rather than through a sqlx (or any connection-per-query) pool.
//!
//! It creates a scratch schema holding `pgclient_users` (100,000 rows), then, for each
//! strategy, runs `--tasks` concurrent tasks that each loop: pick a random id, run
//! `SELECT id, email, name FROM pgclient_users WHERE id = $1`, decode the row. After a 1 s
//! warm-up it counts the statements completed in `--seconds` and finally prints a markdown
//! table. The runtime is single-threaded, so the numbers are per client core: pin the client
//! to one core and let PostgreSQL run wherever it runs, e.g.
//!
//! ```text
//! taskset -c 1 cargo run --release -- --seconds 5
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sqlx::postgres::PgPoolOptions;
use tokio_postgres::{Client, NoTls, Row};

const ROWS: i64 = 100_000;

#[derive(Parser)]
#[command(about = "Compare PostgreSQL client strategies on primary-key lookups")]
struct Args {
    /// PostgreSQL URL.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    url: String,
    /// Concurrent tasks issuing lookups.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Measured seconds per strategy, after a 1 s warm-up.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

/// A decoded `pgclient_users` row: (id, email, name).
type User = (i64, String, String);

const STRATEGIES: [&str; 6] = [
    "sqlx-pool-16",
    "sqlx-pool-16-ping",
    "tokio-postgres-1",
    "tokio-postgres-2",
    "tokio-postgres-4",
    "tokio-postgres-16-exclusive",
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let admin = connect(&args.url)
        .await
        .context("connecting to PostgreSQL")?;
    let schema = format!("pgclient_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.pgclient_users
                 (id bigint PRIMARY KEY, email text NOT NULL, name text NOT NULL);
             INSERT INTO {schema}.pgclient_users
                 SELECT g, 'user' || g || '@example.com', 'User ' || g
                 FROM generate_series(1, {ROWS}) AS g;
             ANALYZE {schema}.pgclient_users;"
        ))
        .await
        .context("creating the scratch table")?;
    // Leaked once so every task and every strategy can borrow it for 'static.
    let sql: &'static str = Box::leak(
        format!("SELECT id, email, name FROM {schema}.pgclient_users WHERE id = $1").into(),
    );

    // Run everything, then drop the scratch schema whether or not a strategy failed.
    let results = run_all(&args, sql).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .context("dropping the scratch schema")?;
    let results = results?;

    let baseline = results[0].1;
    println!("| strategy | statements/s | relative to sqlx-pool-16 |");
    println!("| --- | ---: | ---: |");
    for (name, rate) in results {
        println!("| {name} | {rate:.0} | {:.2}x |", rate / baseline);
    }
    Ok(())
}

async fn run_all(args: &Args, sql: &'static str) -> Result<Vec<(&'static str, f64)>> {
    let mut results = Vec::new();
    for name in STRATEGIES {
        eprintln!("running {name} ...");
        let rate = match name {
            "sqlx-pool-16" => sqlx_pool(args, sql, false).await,
            "sqlx-pool-16-ping" => sqlx_pool(args, sql, true).await,
            "tokio-postgres-1" => shared_clients(args, sql, 1).await,
            "tokio-postgres-2" => shared_clients(args, sql, 2).await,
            "tokio-postgres-4" => shared_clients(args, sql, 4).await,
            _ => exclusive_pool(args, sql).await,
        };
        results.push((name, rate.with_context(|| format!("strategy {name}"))?));
    }
    Ok(results)
}

/// sqlx's pool: every statement checks a connection out, optionally pinging it first.
async fn sqlx_pool(args: &Args, sql: &'static str, ping: bool) -> Result<f64> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(ping)
        .connect(&args.url)
        .await?;
    let shared = pool.clone();
    let rate = measure(args, move |id| {
        let pool = shared.clone();
        async move {
            Ok(sqlx::query_as::<_, User>(sql)
                .bind(id)
                .fetch_one(&pool)
                .await?)
        }
    })
    .await;
    pool.close().await;
    rate
}

/// `n` tokio-postgres clients shared by all tasks, round robin; concurrent statements on one
/// client are pipelined over its connection.
async fn shared_clients(args: &Args, sql: &'static str, n: usize) -> Result<f64> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = connect(&args.url).await?;
        let statement = client.prepare(sql).await?;
        clients.push((client, statement));
    }
    let clients = Arc::new(clients);
    let next = Arc::new(AtomicUsize::new(0));
    measure(args, move |id| {
        let (clients, next) = (clients.clone(), next.clone());
        async move {
            let (client, statement) = &clients[next.fetch_add(1, Relaxed) % clients.len()];
            decode(client.query_one(statement, &[&id]).await?)
        }
    })
    .await
}

/// A deadpool-postgres pool of 16 where each statement holds a connection exclusively: what a
/// pool-per-query design does with tokio-postgres.
async fn exclusive_pool(args: &Args, sql: &'static str) -> Result<f64> {
    let config: tokio_postgres::Config = args.url.parse()?;
    let recycling_method = RecyclingMethod::Fast;
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method });
    let pool = Pool::builder(manager).max_size(16).build()?;
    measure(args, move |id| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            let statement = client.prepare_cached(sql).await?;
            decode(client.query_one(&statement, &[&id]).await?)
        }
    })
    .await
}

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("connection error: {error}");
        }
    });
    Ok(client)
}

fn decode(row: Row) -> Result<User> {
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// Runs `args.tasks` tasks looping `lookup(random id)`; returns statements/s over
/// `args.seconds`, counted after a 1 s warm-up.
async fn measure<F, Fut>(args: &Args, lookup: F) -> Result<f64>
where
    F: Fn(i64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<User>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..args.tasks)
        .map(|task| {
            let (lookup, done, stop) = (lookup.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(task as u64);
                while !stop.load(Relaxed) {
                    std::hint::black_box(lookup(rng.i64(1..=ROWS)).await?);
                    done.fetch_add(1, Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, start) = (done.load(Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (count, elapsed) = (done.load(Relaxed) - before, start.elapsed());
    stop.store(true, Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}
