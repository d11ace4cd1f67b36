//! Tails the event log and fans new events out to this instance's connections.
//!
//! Every instance reads the shared log itself, so a change made through one instance
//! reaches the clients of all of them. On PostgreSQL the triggers `NOTIFY keel_events` on
//! commit and the tailer wakes at once (polling stays as a safety net); SQLite serves one
//! process, which polls.
//!
//! The hub's **watermark** is the id up to which every committed event has been
//! published, in order. On PostgreSQL ids are taken before commit, so concurrent
//! transactions can commit them out of order: a missing id is either still in flight or
//! rolled back. The tailer does not pass it until every transaction that was running when
//! the gap was seen has ended (`pg_snapshot_xmin` has moved past their `xmax`), and reads
//! once more before skipping it. On SQLite writers are serialised, so a gap is final.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, broadcast};

use crate::{
    db::{Db, DbError},
    shutdown::Shutdown,
};

use super::{EventLog, Published};

/// Events read per query.
const PAGE: i64 = 500;

/// How soon the tailer looks again while a gap is unresolved.
const GAP_RECHECK: Duration = Duration::from_millis(20);

/// A gap still open after this long is skipped whatever the snapshots say.
const GAP_GIVE_UP: Duration = Duration::from_secs(30);

/// The channel the PostgreSQL triggers notify.
const CHANNEL: &str = "keel_events";

/// Publishes the log's new events to subscribers, in id order, each once.
#[derive(Debug, Clone)]
pub struct EventHub {
    log: EventLog,
    sender: broadcast::Sender<Arc<Published>>,
    watermark: Arc<AtomicI64>,
    wake: Arc<Notify>,
}

/// A missing id the tailer is waiting on.
#[derive(Debug, Clone, Copy)]
struct Gap {
    /// The first missing id.
    at: i64,
    /// When it was first seen.
    seen: Instant,
    /// `pg_snapshot_xmax` when it was first seen: every transaction that could still
    /// commit it has a lower xid.
    xmax: u64,
    /// Every such transaction had ended before the last read: the gap is final if that
    /// read did not fill it.
    settled: bool,
}

impl EventHub {
    /// A hub over `db`'s log that keeps the last `buffer` events for subscribers that are
    /// behind; one further behind is told it lagged.
    pub fn new(db: Db, buffer: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer.max(1));
        Self {
            log: EventLog::new(db),
            sender,
            watermark: Arc::new(AtomicI64::new(0)),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The log.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// A receiver of every event published from now on, and the watermark: together they
    /// cover the whole log (events up to the watermark are read from the log, later ones
    /// arrive on the receiver; some may come both ways).
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Published>>, i64) {
        let receiver = self.sender.subscribe();
        (receiver, self.watermark.load(Ordering::SeqCst))
    }

    /// The id up to which every committed event has been published.
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::SeqCst)
    }

    /// Connections currently subscribed on this instance.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Asks the tailer to read the log now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts at the log's end and publishes until shutdown, polling every `poll`.
    pub async fn run(self, poll: Duration, shutdown: Shutdown) {
        let start = loop {
            match self.log.latest_id().await {
                Ok(id) => break id,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the event log; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(poll.max(Duration::from_secs(1))) => {}
                        () = shutdown.started() => return,
                    }
                }
            }
        };
        self.watermark.store(start, Ordering::SeqCst);
        self.log
            .db()
            .wake_on_notify(CHANNEL, Arc::clone(&self.wake), shutdown.clone());
        let mut gap: Option<Gap> = None;
        loop {
            let next = match self.publish_new(&mut gap).await {
                Ok(()) if gap.is_some() => GAP_RECHECK,
                Ok(()) => poll,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the event log");
                    poll.max(Duration::from_secs(1))
                }
            };
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = self.wake.notified() => {}
                () = shutdown.started() => return,
            }
        }
    }

    /// Publishes every event that follows the watermark without an unresolved gap.
    async fn publish_new(&self, gap: &mut Option<Gap>) -> Result<(), DbError> {
        loop {
            let mut watermark = self.watermark.load(Ordering::SeqCst);
            let events = self.log.after(watermark, PAGE).await?;
            let full_page = events.len() as i64 == PAGE;
            for event in events {
                if event.id != watermark + 1 && !self.gap_is_final(gap, watermark + 1).await? {
                    return Ok(());
                }
                *gap = None;
                watermark = event.id;
                // The watermark moves first: a subscriber that reads it afterwards gets
                // this event from the log or from the channel, never from neither.
                self.watermark.store(watermark, Ordering::SeqCst);
                // No subscriber is not an error.
                let _ = self.sender.send(Arc::new(event));
            }
            if !full_page {
                return Ok(());
            }
        }
    }

    /// Whether the ids from `at` up to the next stored event will never be committed.
    async fn gap_is_final(&self, gap: &mut Option<Gap>, at: i64) -> Result<bool, DbError> {
        if !matches!(self.log.db(), Db::Postgres { .. }) {
            return Ok(true);
        }
        match gap {
            Some(open) if open.at == at => {
                if open.settled || open.seen.elapsed() > GAP_GIVE_UP {
                    if !open.settled {
                        tracing::warn!(id = at, "skipping an event id still missing after 30 s");
                    }
                    return Ok(true);
                }
                let (xmin, _) = self.log.snapshot().await?;
                // Settled now; the gap is final only if the next read still lacks it.
                open.settled = xmin >= open.xmax;
                Ok(false)
            }
            _ => {
                let (_, xmax) = self.log.snapshot().await?;
                *gap = Some(Gap {
                    at,
                    seen: Instant::now(),
                    xmax,
                    settled: false,
                });
                Ok(false)
            }
        }
    }
}

impl EventLog {
    fn db(&self) -> &Db {
        &self.db
    }

    /// PostgreSQL's current `(xmin, xmax)`: transactions below xmin have all ended, and
    /// any that starts from now on gets an xid of at least xmax.
    async fn snapshot(&self) -> Result<(u64, u64), DbError> {
        let (xmin, xmax): (String, String) = self
            .db
            .fetch_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, \
                 pg_snapshot_xmax(pg_current_snapshot())::text",
                &[],
            )
            .await?;
        let parse = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| DbError::Corrupt(format!("transaction id {v:?}: {e}")))
        };
        Ok((parse(&xmin)?, parse(&xmax)?))
    }
}
