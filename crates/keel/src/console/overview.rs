//! The overview: how many users, jobs by state, failing webhooks, and the last quarter of
//! an hour of requests (rate and p95 latency), queue depth and live connections, drawn as
//! small charts.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use askama::Template;
use axum::{extract::State, response::Response};

use crate::{
    events::EventHub, jobs::Jobs, metrics::recent::RecentTraffic, shutdown::Shutdown,
    users::store::UserStore, webhooks::WebhookStore,
};

use super::{
    ConsoleState,
    error::ConsoleError,
    session::Signed,
    view::{Chrome, ok},
};

/// How often the queue and the connections are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// Samples kept: a quarter of an hour.
const SAMPLES: usize = 30;

/// Where the overview's numbers come from: the features' public types, read directly.
#[derive(Clone)]
pub struct Sources {
    /// Users, for their count.
    pub users: UserStore,
    /// The queue's depth and states.
    pub jobs: Jobs,
    /// Endpoints whose last delivery failed.
    pub webhooks: WebhookStore,
    /// Live event connections.
    pub events: EventHub,
    /// Requests per minute and their latency.
    pub traffic: Arc<RecentTraffic>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    depth: i64,
    oldest_secs: i64,
    connections: usize,
}

/// The sources and the samples taken of them.
pub struct Overview {
    sources: Sources,
    samples: Mutex<VecDeque<Sample>>,
}

impl Overview {
    /// An overview of `sources`, with no samples yet.
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
        }
    }

    /// Samples every [`SAMPLE_EVERY`] until shutdown.
    pub async fn sample(&self, shutdown: Shutdown) {
        let mut interval = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = shutdown.started() => return,
            }
            let stats = match self.sources.jobs.store().stats().await {
                Ok(stats) => stats,
                Err(error) => {
                    tracing::debug!(%error, "cannot sample the job queue");
                    continue;
                }
            };
            let sample = Sample {
                depth: stats.depth,
                oldest_secs: stats.oldest_age.map_or(0, |age| age.num_seconds()),
                connections: self.sources.events.subscribers(),
            };
            let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back(sample);
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }
}

/// One bar of a chart, in the SVG's coordinates.
#[derive(Debug)]
pub struct Bar {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    label: String,
}

/// A small bar chart.
#[derive(Debug)]
pub struct Chart {
    id: &'static str,
    title: &'static str,
    /// The latest value and the largest, in words.
    summary: String,
    bars: Vec<Bar>,
}

const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 60.0;

fn chart(id: &'static str, title: &'static str, values: &[(f64, String)], unit: &str) -> Chart {
    let max = values.iter().map(|(v, _)| *v).fold(0.0_f64, f64::max);
    let scale = nice_ceiling(max);
    let slot = WIDTH / values.len().max(1) as f64;
    let bars = values
        .iter()
        .enumerate()
        .map(|(i, (value, label))| {
            // A zero stays visible as a hairline, so an empty minute reads as measured.
            let height = if scale > 0.0 {
                (value / scale * (HEIGHT - 2.0)).max(1.0)
            } else {
                1.0
            };
            Bar {
                x: i as f64 * slot + 1.0,
                y: HEIGHT - height,
                width: (slot - 2.0).max(1.0),
                height,
                label: label.clone(),
            }
        })
        .collect();
    let last = values.last().map_or(0.0, |(v, _)| *v);
    Chart {
        id,
        title,
        summary: format!("now {}{unit}, highest {}{unit}", round(last), round(max)),
        bars,
    }
}

/// The top of a chart's scale: the next of 1, 2, 5, 10, 20, 50, ... at or above `max`, so
/// that a steady value draws as a level below the top rather than a solid block.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 0.0;
    }
    let mut step = 1.0;
    while step * 10.0 <= max {
        step *= 10.0;
    }
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * step)
        .find(|top| *top > max)
        .unwrap_or(step * 10.0)
}

fn round(value: f64) -> String {
    if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct Page {
    chrome: Chrome,
    users: i64,
    queued: i64,
    running: i64,
    dead: i64,
    oldest: String,
    failing_webhooks: i64,
    connections: usize,
    charts: Vec<Chart>,
}

/// `GET /admin/`.
pub async fn page(
    State(state): State<ConsoleState>,
    signed: Signed,
) -> Result<Response, ConsoleError> {
    let overview = &state.overview;
    let sources = &overview.sources;
    let users = sources
        .users
        .count()
        .await
        .map_err(|e| ConsoleError::Internal(e.into()))?;
    let stats = sources
        .jobs
        .store()
        .stats()
        .await
        .map_err(|e| ConsoleError::Internal(e.into()))?;
    let failing_webhooks = sources
        .webhooks
        .failing()
        .await
        .map_err(|e| ConsoleError::Internal(e.into()))?;
    let traffic = sources.traffic.last_quarter();
    let minute_label = |i: usize| match traffic.len() - 1 - i {
        0 => "this minute".to_owned(),
        back => format!("{back} min ago"),
    };
    let rate: Vec<(f64, String)> = traffic
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                m.requests as f64,
                format!("{}: {} requests", minute_label(i), m.requests),
            )
        })
        .collect();
    let p95: Vec<(f64, String)> = traffic
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ms = m.p95.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            (ms, format!("{}: p95 {} ms", minute_label(i), round(ms)))
        })
        .collect();
    let samples = overview.samples();
    let ago = |i: usize| {
        let secs = (samples.len() - i) as u64 * SAMPLE_EVERY.as_secs();
        format!("{} s ago", secs)
    };
    let depth: Vec<(f64, String)> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s.depth as f64,
                format!("{}: {} queued, oldest {} s", ago(i), s.depth, s.oldest_secs),
            )
        })
        .collect();
    let connections: Vec<(f64, String)> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s.connections as f64,
                format!("{}: {} connections", ago(i), s.connections),
            )
        })
        .collect();
    Ok(ok(&Page {
        chrome: Chrome::signed("Overview", "/admin/", &signed.session.csrf),
        users,
        queued: stats.depth,
        running: stats.running,
        dead: stats.dead,
        oldest: stats
            .oldest_age
            .map_or_else(|| "–".to_owned(), |age| format!("{} s", age.num_seconds())),
        failing_webhooks,
        connections: sources.events.subscribers(),
        charts: vec![
            chart("rate", "Requests per minute", &rate, " /min"),
            chart("p95", "p95 latency per minute", &p95, " ms"),
            chart("depth", "Queue depth", &depth, " queued"),
            chart("connections", "Live-event connections", &connections, ""),
        ],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_a_round_top_and_zeroes_stay_visible() {
        let values = [
            (0.0, "a".to_owned()),
            (5.0, "b".to_owned()),
            (10.0, "c".to_owned()),
        ];
        let c = chart("x", "X", &values, " /min");
        assert_eq!(c.bars.len(), 3);
        // The scale tops out at 20, the next round number above 10.
        assert!((c.bars[2].height - (HEIGHT - 2.0) / 2.0).abs() < 1e-9);
        assert!((c.bars[1].height - (HEIGHT - 2.0) / 4.0).abs() < 1e-9);
        assert!((c.bars[0].height - 1.0).abs() < 1e-9);
        assert_eq!(c.summary, "now 10 /min, highest 10 /min");
        assert!(c.bars.iter().all(|b| b.x + b.width <= WIDTH));
    }

    #[test]
    fn scales_end_on_round_numbers_above_the_highest_value() {
        for (max, top) in [
            (0.0, 0.0),
            (1.0, 2.0),
            (2.0, 5.0),
            (7.0, 10.0),
            (10.0, 20.0),
            (420.0, 500.0),
        ] {
            assert_eq!(nice_ceiling(max), top, "{max}");
        }
    }
}
