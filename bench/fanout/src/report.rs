//! Turns the timestamps into the figures the benchmark reports.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use serde::Serialize;

use crate::{
    Args,
    proc_stats::Memory,
    streams::{StreamLog, Transport},
};

/// One write: the user it created and when it was sent and answered.
#[derive(Debug)]
pub struct Write {
    /// The created user's id, from the 201 answer.
    pub user_id: String,
    /// Just before the request was handed to the connection.
    pub sent: Instant,
    /// When the 201 had been read.
    pub answered: Instant,
}

/// What the client measured outside the streams.
#[derive(Debug)]
pub struct Phase {
    /// Seconds from the first stream's open to the last one's subscription.
    pub open_secs: f64,
    /// keel before any stream (after the warm-up).
    pub before: Memory,
    /// keel as the last stream was subscribed.
    pub connected: Memory,
    /// keel after the settle time.
    pub settled: Memory,
    /// keel after the last write's events were delivered.
    pub after: Memory,
    /// Highest `VmRSS` sampled until the settle time ended.
    pub peak_while_opening_kib: u64,
    /// Highest `VmRSS` sampled over the whole run.
    pub peak_kib: u64,
    /// Seconds from the first write to the last delivery (or the end of the grace time).
    pub writes_secs: f64,
    /// CPU time keel used over that span.
    pub server_cpu_ms: f64,
    /// CPU time this client used over that span.
    pub client_cpu_ms: f64,
    /// Busy time of each CPU of the machine over that span.
    pub cpu_busy_ms: Vec<f64>,
}

/// p50, p99 and max of a set of milliseconds.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// How many values.
    pub count: usize,
    /// Median (nearest rank).
    pub p50: Option<f64>,
    /// 99th percentile (nearest rank).
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
    /// Mean.
    pub mean: Option<f64>,
}

impl Summary {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            (!values.is_empty()).then(|| {
                let k = ((p / 100.0) * values.len() as f64).ceil() as usize;
                round3(values[k.clamp(1, values.len()) - 1])
            })
        };
        Self {
            count: values.len(),
            p50: rank(50.0),
            p99: rank(99.0),
            max: values.last().copied().map(round3),
            mean: (!values.is_empty())
                .then(|| round3(values.iter().sum::<f64>() / values.len() as f64)),
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// keel's memory over the run.
#[derive(Debug, Serialize)]
pub struct MemoryReport {
    /// Before any stream, after the warm-up.
    pub before: Memory,
    /// As the last stream was subscribed.
    pub connected: Memory,
    /// After the settle time: the figure per connection comes from this one.
    pub settled: Memory,
    /// After the writes.
    pub after_writes: Memory,
    /// Highest `VmRSS` sampled (every 100 ms) until the settle time ended.
    pub peak_while_opening_kib: u64,
    /// Highest `VmRSS` sampled over the whole run, fan-out included.
    pub peak_kib: u64,
    /// (settled − before) `VmRSS` / subscribed streams.
    pub per_connection_kib: Option<f64>,
    /// The same for `RssAnon`.
    pub per_connection_anon_kib: Option<f64>,
}

/// One write's fan-out.
#[derive(Debug, Serialize)]
pub struct PerWrite {
    /// The created user.
    pub user_id: String,
    /// Milliseconds until the 201.
    pub write_ms: f64,
    /// Streams that received its event.
    pub received: usize,
    /// Milliseconds from the send to the first stream's receipt.
    pub first_ms: Option<f64>,
    /// Milliseconds from the send to the last stream's receipt.
    pub last_ms: Option<f64>,
}

/// Deliveries and their delays.
#[derive(Debug, Serialize)]
pub struct Delivery {
    /// Writes × streams open from the first write to the end.
    pub expected: usize,
    /// (stream, write) pairs received on those streams.
    pub received: usize,
    /// (stream, write) pairs never received on those streams.
    pub missed: usize,
    /// Events a stream received more than once.
    pub duplicates: usize,
    /// `user.created` events for users this run's writes did not create (such as the
    /// warm-up's, published after some streams subscribed).
    pub other_events: usize,
    /// Send → receipt, over every (stream, write) pair received.
    pub delay_ms: Summary,
    /// Send → first stream's receipt, per write: the path through the database and hub.
    pub first_client_ms: Summary,
    /// Send → last stream's receipt, per write: the time until every client had it.
    pub last_client_ms: Summary,
    /// Send → 201 answer, per write.
    pub write_ms: Summary,
}

/// CPU time spent while the writes fanned out.
#[derive(Debug, Serialize)]
pub struct Cpu {
    /// keel's CPU milliseconds from the first write to the last delivery.
    pub server_ms: f64,
    /// The client's.
    pub client_ms: f64,
    /// keel's CPU microseconds per delivery (heartbeats and the writes included).
    pub server_us_per_delivery: Option<f64>,
    /// The client's.
    pub client_us_per_delivery: Option<f64>,
    /// keel's CPU time as a share of the span, in percent of one core.
    pub server_pct: f64,
    /// The client's.
    pub client_pct: f64,
    /// How busy each CPU of the machine was over the span, in percent: above keel's (CPU 0)
    /// or the client's (CPU 1) share is PostgreSQL or anything else that ran.
    pub machine_busy_pct: Vec<f64>,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `ws` or `sse`.
    pub transport: Transport,
    /// Streams asked for.
    pub connections: usize,
    /// Streams opened at the same time.
    pub open_parallel: usize,
    /// The client's open-file limit.
    pub client_open_files_limit: u64,
    /// Streams keel subscribed.
    pub subscribed: usize,
    /// Streams that could not be opened, by error.
    pub open_failures: BTreeMap<String, usize>,
    /// Seconds to open them all.
    pub open_secs: f64,
    /// Writes made.
    pub writes: usize,
    /// Milliseconds between two writes.
    pub interval_ms: u64,
    /// Seconds from the first write to the last delivery.
    pub writes_secs: f64,
    /// Streams that ended before the client stopped them.
    pub dropped: usize,
    /// Why they ended.
    pub drop_reasons: BTreeMap<String, usize>,
    /// keel's memory.
    pub memory: MemoryReport,
    /// Deliveries and delays.
    pub delivery: Delivery,
    /// CPU time during the writes.
    pub cpu: Cpu,
    /// Each write.
    pub per_write: Vec<PerWrite>,
}

impl Report {
    /// Matches every stream's receipts with the writes.
    pub fn build(
        args: &Args,
        open_files_limit: u64,
        phase: Phase,
        writes: &[Write],
        logs: &[StreamLog],
    ) -> Self {
        let index: HashMap<&str, usize> = writes
            .iter()
            .enumerate()
            .map(|(k, w)| (w.user_id.as_str(), k))
            .collect();
        let mut open_failures = BTreeMap::new();
        let mut drop_reasons = BTreeMap::new();
        let mut delays = Vec::new();
        let mut first = vec![None::<f64>; writes.len()];
        let mut last = vec![None::<f64>; writes.len()];
        let mut received_per_write = vec![0usize; writes.len()];
        let (mut expected, mut received, mut missed, mut duplicates, mut other) = (0, 0, 0, 0, 0);
        for log in logs {
            if let Some(error) = &log.open_error {
                *open_failures.entry(error.clone()).or_insert(0) += 1;
                continue;
            }
            if let Some(reason) = &log.dropped {
                *drop_reasons.entry(reason.clone()).or_insert(0) += 1;
            }
            let mut seen = vec![false; writes.len()];
            for receipt in &log.receipts {
                let Some(&k) = index.get(&*receipt.user_id) else {
                    other += 1;
                    continue;
                };
                if seen[k] {
                    duplicates += 1;
                    continue;
                }
                seen[k] = true;
                received_per_write[k] += 1;
                let delay = ms(writes[k].sent, receipt.at);
                delays.push(delay);
                first[k] = Some(first[k].map_or(delay, |f: f64| f.min(delay)));
                last[k] = Some(last[k].map_or(delay, |l: f64| l.max(delay)));
            }
            if log.dropped.is_none() {
                expected += writes.len();
                let got = seen.iter().filter(|s| **s).count();
                received += got;
                missed += writes.len() - got;
            }
        }
        let subscribed = logs.iter().filter(|l| l.open_error.is_none()).count();
        let per_connection = |after: u64, before: u64| {
            (subscribed > 0).then(|| round3((after as f64 - before as f64) / subscribed as f64))
        };
        let deliveries = delays.len();
        let per_delivery =
            |cpu_ms: f64| (deliveries > 0).then(|| round3(cpu_ms * 1000.0 / deliveries as f64));
        let write_ms: Vec<f64> = writes.iter().map(|w| ms(w.sent, w.answered)).collect();
        let pct = |cpu_ms: f64| round3(cpu_ms / (phase.writes_secs * 10.0));
        Self {
            transport: args.transport,
            connections: args.connections,
            open_parallel: args.open_parallel,
            client_open_files_limit: open_files_limit,
            subscribed,
            open_failures,
            open_secs: round3(phase.open_secs),
            writes: writes.len(),
            interval_ms: args.interval_ms,
            writes_secs: round3(phase.writes_secs),
            dropped: drop_reasons.values().sum(),
            drop_reasons,
            memory: MemoryReport {
                before: phase.before,
                connected: phase.connected,
                settled: phase.settled,
                after_writes: phase.after,
                peak_while_opening_kib: phase.peak_while_opening_kib,
                peak_kib: phase.peak_kib,
                per_connection_kib: per_connection(phase.settled.rss_kib, phase.before.rss_kib),
                per_connection_anon_kib: per_connection(
                    phase.settled.rss_anon_kib,
                    phase.before.rss_anon_kib,
                ),
            },
            delivery: Delivery {
                expected,
                received,
                missed,
                duplicates,
                other_events: other,
                delay_ms: Summary::of(delays),
                first_client_ms: Summary::of(first.iter().flatten().copied().collect()),
                last_client_ms: Summary::of(last.iter().flatten().copied().collect()),
                write_ms: Summary::of(write_ms.clone()),
            },
            cpu: Cpu {
                server_ms: round3(phase.server_cpu_ms),
                client_ms: round3(phase.client_cpu_ms),
                server_us_per_delivery: per_delivery(phase.server_cpu_ms),
                client_us_per_delivery: per_delivery(phase.client_cpu_ms),
                server_pct: pct(phase.server_cpu_ms),
                client_pct: pct(phase.client_cpu_ms),
                machine_busy_pct: phase.cpu_busy_ms.iter().map(|&b| pct(b)).collect(),
            },
            per_write: writes
                .iter()
                .enumerate()
                .map(|(k, w)| PerWrite {
                    user_id: w.user_id.clone(),
                    write_ms: round3(write_ms[k]),
                    received: received_per_write[k],
                    first_ms: first[k].map(round3),
                    last_ms: last[k].map(round3),
                })
                .collect(),
        }
    }
}
