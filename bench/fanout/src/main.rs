//! keel's event fan-out under many connections: holds `--connections` WebSocket or SSE
//! streams on one keel instance, reads keel's memory before and after opening them, then
//! creates users one at a time and times each `user.created` event from the moment its
//! write was sent to the moment each stream received it.
//!
//! Every stream authenticates with the admin's access token (env `FANOUT_TOKEN`), so every
//! stream receives every write's event. The client runs on one thread; pin it to a core of
//! its own and keel to another (`bench/fanout.py` does both). It prints one JSON document
//! on stdout and its progress on stderr:
//!
//! ```text
//! FANOUT_TOKEN=... taskset -c 1 target/release/fanout --addr 127.0.0.1:3000 \
//!     --server-pid 1234 --transport ws --connections 10000
//! ```

mod api;
mod proc_stats;
mod report;
mod streams;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use http::HeaderValue;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinHandle,
};

use api::Api;
use report::{Phase, Report, Write};
use streams::{Progress, StreamLog, Target, Transport};

#[derive(Debug, Parser)]
#[command(about = "Hold many event streams on keel and time each write's event to all of them")]
struct Args {
    /// keel's host:port.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: String,
    /// keel's process id, whose memory and CPU time are read from /proc.
    #[arg(long)]
    server_pid: u32,
    /// WebSocket (`GET /events/ws`) or Server-Sent Events (`GET /events`).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Streams to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Streams being opened at the same time.
    #[arg(long, default_value_t = 200)]
    open_parallel: usize,
    /// Seconds to wait after the last stream opened before reading keel's memory.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Users created, one at a time.
    #[arg(long, default_value_t = 40)]
    writes: usize,
    /// Milliseconds between the starts of two writes.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Seconds to wait after the last write for events still on their way.
    #[arg(long, default_value_t = 15)]
    grace_secs: u64,
    /// An admin's access token.
    #[arg(long, env = "FANOUT_TOKEN", hide_env_values = true)]
    token: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let report = run(&args).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn run(args: &Args) -> Result<Report> {
    let open_files_limit = proc_stats::raise_open_files_limit()?;
    if open_files_limit < args.connections as u64 + 64 {
        bail!("this process may open {open_files_limit} files: too few for the streams");
    }
    let pid = args.server_pid;
    let tag = format!("{}-{}", std::process::id(), unix_seconds());
    let target = Arc::new(Target {
        addr: args.addr.clone(),
        authorization: HeaderValue::from_str(&format!("Bearer {}", args.token))
            .context("FANOUT_TOKEN")?,
    });
    let mut api = Api::connect(&args.addr, &args.token).await?;

    // Warm-up: one write and one stream, so the baseline has every code path loaded.
    api.create_user(
        &format!("fanout-{tag}-warmup@bench.example"),
        "Fanout warm-up",
    )
    .await?;
    {
        let progress = Arc::new(Progress::default());
        let (stop, stopped) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await?;
        let one = tokio::spawn(streams::hold(
            args.transport,
            Arc::clone(&target),
            Arc::clone(&progress),
            permit,
            stopped,
        ));
        wait_until(Duration::from_secs(10), || {
            progress.subscribed.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed)
                > 0
        })
        .await;
        stop.send_replace(true);
        let log = one.await?;
        if let Some(error) = log.open_error {
            bail!("the warm-up stream could not be opened: {error}");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = proc_stats::memory(pid)?;
    eprintln!(
        "fanout: keel RSS before streams {} KiB; opening {} {:?} streams",
        before.rss_kib, args.connections, args.transport
    );

    let peak = Arc::new(AtomicU64::new(before.rss_kib));
    let sampler = tokio::spawn(sample_peak(pid, Arc::clone(&peak)));

    // Open every stream, at most `open_parallel` handshakes at a time.
    let progress = Arc::new(Progress::default());
    let (stop, stopped) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.open_parallel.max(1)));
    let open_started = Instant::now();
    let mut tasks: Vec<JoinHandle<StreamLog>> = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let permit = Arc::clone(&gate).acquire_owned().await?;
        tasks.push(tokio::spawn(streams::hold(
            args.transport,
            Arc::clone(&target),
            Arc::clone(&progress),
            permit,
            stopped.clone(),
        )));
    }
    let mut last_print = Instant::now();
    wait_until(Duration::from_secs(600), || {
        let (subscribed, failed) = (
            progress.subscribed.load(Ordering::Relaxed),
            progress.failed.load(Ordering::Relaxed),
        );
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!("fanout: {subscribed} subscribed, {failed} failed");
            last_print = Instant::now();
        }
        subscribed + failed >= args.connections
    })
    .await;
    let open_secs = open_started.elapsed().as_secs_f64();
    let subscribed = progress.subscribed.load(Ordering::Relaxed);
    let connected = proc_stats::memory(pid)?;
    eprintln!(
        "fanout: {subscribed} streams subscribed in {open_secs:.1} s; settling {} s",
        args.settle_secs
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let settled = proc_stats::memory(pid)?;
    let peak_while_opening = peak.load(Ordering::Relaxed);

    // The writes, on their own connection, one every `interval_ms`.
    let server_cpu_before = proc_stats::cpu_ms(pid)?;
    let client_cpu_before = proc_stats::cpu_ms(0)?;
    let machine_before = proc_stats::busy_ms_per_cpu()?;
    let alive_before_writes = subscribed - progress.dropped.load(Ordering::Relaxed);
    let received_before = progress.received.load(Ordering::Relaxed);
    let writes_started = Instant::now();
    let mut writes = Vec::with_capacity(args.writes);
    for k in 0..args.writes {
        let due = writes_started + Duration::from_millis(args.interval_ms) * k as u32;
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        let user_id = api
            .create_user(
                &format!("fanout-{tag}-{k}@bench.example"),
                &format!("Fanout User {k}"),
            )
            .await?;
        writes.push(Write {
            user_id,
            sent,
            answered: Instant::now(),
        });
    }
    let expected = args.writes * alive_before_writes;
    let all_in = wait_until(Duration::from_secs(args.grace_secs), || {
        let alive = subscribed - progress.dropped.load(Ordering::Relaxed);
        progress.received.load(Ordering::Relaxed) - received_before >= args.writes * alive
    })
    .await;
    let writes_secs = writes_started.elapsed().as_secs_f64();
    let server_cpu_ms = proc_stats::cpu_ms(pid)? - server_cpu_before;
    let client_cpu_ms = proc_stats::cpu_ms(0)? - client_cpu_before;
    let cpu_busy_ms = proc_stats::busy_ms_per_cpu()?
        .iter()
        .zip(&machine_before)
        .map(|(after, before)| after - before)
        .collect();
    let after = proc_stats::memory(pid)?;
    eprintln!(
        "fanout: {} of {expected} deliveries in {writes_secs:.1} s{}",
        progress.received.load(Ordering::Relaxed) - received_before,
        if all_in { "" } else { " (grace period over)" }
    );

    stop.send_replace(true);
    sampler.abort();
    let mut logs = Vec::with_capacity(tasks.len());
    for task in tasks {
        logs.push(task.await?);
    }
    Ok(Report::build(
        args,
        open_files_limit,
        Phase {
            open_secs,
            before,
            connected,
            settled,
            after,
            peak_while_opening_kib: peak_while_opening,
            peak_kib: peak.load(Ordering::Relaxed),
            writes_secs,
            server_cpu_ms,
            client_cpu_ms,
            cpu_busy_ms,
        },
        &writes,
        &logs,
    ))
}

/// Polls `done` every 20 ms until it holds (true) or `limit` passes (false).
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Keeps the highest `VmRSS` of `pid` seen, sampled every 100 ms.
async fn sample_peak(pid: u32, peak: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Ok(kib) = proc_stats::rss_kib(pid) {
            peak.fetch_max(kib, Ordering::Relaxed);
        }
    }
}

/// Seconds since the Unix epoch: makes the e-mail addresses of two runs differ.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
