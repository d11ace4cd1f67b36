//! The last quarter of an hour of requests, minute by minute, kept in the process whether
//! or not Prometheus is configured: what the admin console's overview draws.
//!
//! Sixteen one-minute slots (the current minute and the fifteen before it), each a request
//! count and a latency histogram in fixed buckets. Recording is a few relaxed atomic
//! additions; a slot whose minute has passed is cleared by the first request of its new
//! minute. Under a race at a minute's turn a request or two may land in the cleared slot or
//! be lost, which a 15-minute chart cannot show.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Minutes kept, the current one included.
const SLOTS: usize = 16;

/// Upper bounds of the latency buckets, in microseconds; a last bucket takes the rest.
const BOUNDS_MICROS: [u64; 17] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

const BUCKETS: usize = BOUNDS_MICROS.len() + 1;

#[derive(Debug, Default)]
struct Slot {
    /// Minutes since the Unix epoch that the counts belong to.
    minute: AtomicU64,
    count: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// Requests per minute and their latency, for the last fifteen minutes.
#[derive(Debug, Default)]
pub struct RecentTraffic {
    slots: [Slot; SLOTS],
}

/// One minute's requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    /// Requests finished in it.
    pub requests: u64,
    /// The 95th percentile of their durations (the upper bound of its bucket), when there
    /// were requests.
    pub p95: Option<Duration>,
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 60)
}

impl RecentTraffic {
    /// Counts a request that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        self.record_at(minute_now(), elapsed);
    }

    fn record_at(&self, minute: u64, elapsed: Duration) {
        let slot = &self.slots[(minute % SLOTS as u64) as usize];
        let seen = slot.minute.load(Ordering::Relaxed);
        if seen != minute
            && slot
                .minute
                .compare_exchange(seen, minute, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.count.store(0, Ordering::Relaxed);
            for bucket in &slot.buckets {
                bucket.store(0, Ordering::Relaxed);
            }
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS.partition_point(|bound| *bound < micros);
        slot.count.fetch_add(1, Ordering::Relaxed);
        slot.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The last fifteen minutes, oldest first; the last is the current minute, still
    /// filling up.
    pub fn last_quarter(&self) -> Vec<Minute> {
        self.quarter_until(minute_now())
    }

    fn quarter_until(&self, now: u64) -> Vec<Minute> {
        (0..SLOTS as u64 - 1)
            .rev()
            .filter_map(|back| now.checked_sub(back))
            .map(|minute| {
                let slot = &self.slots[(minute % SLOTS as u64) as usize];
                if slot.minute.load(Ordering::Relaxed) != minute {
                    return Minute {
                        minute,
                        requests: 0,
                        p95: None,
                    };
                }
                let counts: Vec<u64> = slot
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let requests: u64 = counts.iter().sum();
                Minute {
                    minute,
                    requests,
                    p95: percentile(&counts, requests, 95),
                }
            })
            .collect()
    }
}

/// The upper bound of the bucket holding the `pct`th percentile of `total` requests.
fn percentile(counts: &[u64], total: u64, pct: u64) -> Option<Duration> {
    if total == 0 {
        return None;
    }
    // The rank of the percentile, rounded up: the 95th of 20 requests is the 19th.
    let rank = (total * pct).div_ceil(100);
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let bound = BOUNDS_MICROS
                .get(i)
                .copied()
                .unwrap_or(BOUNDS_MICROS[BOUNDS_MICROS.len() - 1]);
            return Some(Duration::from_micros(bound));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_count_their_own_requests_and_their_p95() {
        let traffic = RecentTraffic::default();
        for _ in 0..19 {
            traffic.record_at(1000, Duration::from_micros(800));
        }
        traffic.record_at(1000, Duration::from_millis(40));
        traffic.record_at(1002, Duration::from_millis(3));
        let quarter = traffic.quarter_until(1002);
        assert_eq!(quarter.len(), 15);
        assert_eq!(quarter.first().map(|m| m.minute), Some(988));
        assert_eq!(quarter.last().map(|m| m.minute), Some(1002));
        let at = |minute| quarter.iter().find(|m| m.minute == minute).copied();
        let busy = at(1000).unwrap();
        assert_eq!(busy.requests, 20);
        // 19 of 20 took under a millisecond: the 95th percentile is in that bucket.
        assert_eq!(busy.p95, Some(Duration::from_millis(1)));
        assert_eq!(at(1001).unwrap().requests, 0);
        assert_eq!(at(1001).unwrap().p95, None);
        assert_eq!(at(1002).unwrap().p95, Some(Duration::from_millis(5)));
    }

    #[test]
    fn a_slot_is_cleared_when_its_minute_comes_round_again() {
        let traffic = RecentTraffic::default();
        traffic.record_at(100, Duration::from_millis(1));
        traffic.record_at(100 + SLOTS as u64, Duration::from_millis(1));
        let quarter = traffic.quarter_until(100 + SLOTS as u64);
        let minute = quarter.last().unwrap();
        assert_eq!((minute.minute, minute.requests), (100 + SLOTS as u64, 1));
        // The old minute is out of the window and its count did not leak into the new one.
        assert!(quarter.iter().all(|m| m.minute > 100));
    }
}
