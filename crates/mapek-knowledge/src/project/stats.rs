//! The projections' counters: live, by stream, and summed over a phase's streams.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use mapek_bus::layout;
use mapek_domain::Phase;

use super::PROJECTED;

/// Live counters of one stream's projection.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Events written (their rows are in the read model).
    pub applied: AtomicU64,
    /// Messages that did not decode, or that the store refused (dead-lettered), skipped with
    /// a warning.
    pub skipped: AtomicU64,
    /// Messages the store kept refusing, stored in the dead-letter stream (and skipped).
    pub dead_lettered: AtomicU64,
    /// Messages at or below the stored sequence, delivered again and ignored.
    pub redelivered: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Failed tries to write to the SQL store (each followed by a pause and a retry).
    pub store_failures: AtomicU64,
    /// Failed writes to Redis (the cache misses them; the SQL rows are there).
    pub redis_failures: AtomicU64,
    /// Failed reads of the log (a leader election, a lost server), each followed by a pause
    /// and the consumer opened again from the stored sequence.
    pub log_failures: AtomicU64,
    /// The last stream sequence committed.
    pub last_seq: AtomicU64,
}

impl StreamCounters {
    /// What the counters say now.
    pub fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            applied: get(&self.applied),
            skipped: get(&self.skipped),
            dead_lettered: get(&self.dead_lettered),
            redelivered: get(&self.redelivered),
            batches: get(&self.batches),
            store_failures: get(&self.store_failures),
            redis_failures: get(&self.redis_failures),
            log_failures: get(&self.log_failures),
            last_seq: get(&self.last_seq),
        }
    }
}

/// The counters of one stream's projection, or summed over a phase's streams, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Events written (their rows are in the read model).
    pub applied: u64,
    /// Messages that did not decode or that the store refused, skipped with a warning.
    pub skipped: u64,
    /// Messages the store kept refusing, stored in the dead-letter stream.
    pub dead_lettered: u64,
    /// Messages at or below the stored sequence, delivered again and ignored.
    pub redelivered: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Failed tries to write to the SQL store.
    pub store_failures: u64,
    /// Failed writes to Redis.
    pub redis_failures: u64,
    /// Failed reads of the log.
    pub log_failures: u64,
    /// The last stream sequence committed. Summed over a phase's streams it counts the
    /// messages the projections have gone through, as each stream numbers its own from 1.
    pub last_seq: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.applied += o.applied;
        self.skipped += o.skipped;
        self.dead_lettered += o.dead_lettered;
        self.redelivered += o.redelivered;
        self.batches += o.batches;
        self.store_failures += o.store_failures;
        self.redis_failures += o.redis_failures;
        self.log_failures += o.log_failures;
        self.last_seq += o.last_seq;
    }
}

/// Live counters of every projection, by stream; clone it to watch them while they run.
/// A stream appears once its projection starts.
#[derive(Clone, Debug, Default)]
pub struct ProjectionStats {
    streams: Arc<RwLock<BTreeMap<String, Arc<StreamCounters>>>>,
}

impl ProjectionStats {
    /// The counters of stream `name` (created at zero), for its projection to count into.
    pub(super) fn of_stream(&self, name: &str) -> Arc<StreamCounters> {
        let mut streams = self.streams.write().unwrap_or_else(|e| e.into_inner());
        streams.entry(name.to_owned()).or_default().clone()
    }

    /// Each projected stream's counts, in loop order (then by name: `MAPEK_MONITOR_0`,
    /// `MAPEK_MONITOR_1`, …).
    pub fn streams(&self) -> Vec<(String, Counts)> {
        let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(String, Counts)> = streams
            .iter()
            .map(|(name, c)| (name.clone(), c.counts()))
            .collect();
        let order = |name: &str| {
            layout::phase_of_stream(name)
                .and_then(|phase| PROJECTED.iter().position(|p| *p == phase))
                .unwrap_or(PROJECTED.len())
        };
        // By length before name: `MAPEK_MONITOR_2` before `MAPEK_MONITOR_10`.
        all.sort_by(|(a, _), (b, _)| {
            (order(a), a.len(), a.as_str()).cmp(&(order(b), b.len(), b.as_str()))
        });
        all
    }

    /// The counts of stream `name`, if it has been projected.
    pub fn stream(&self, name: &str) -> Option<Counts> {
        let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
        streams.get(name).map(|c| c.counts())
    }

    /// The counts of `phase`, summed over every stream that stores it.
    pub fn phase(&self, phase: Phase) -> Counts {
        let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
        let mut sum = Counts::default();
        for (name, c) in streams.iter() {
            if layout::phase_of_stream(name) == Some(phase) {
                sum += c.counts();
            }
        }
        sum
    }

    /// The sum of a counter over every stream.
    pub fn total(&self, counter: impl Fn(&StreamCounters) -> &AtomicU64) -> u64 {
        let streams = self.streams.read().unwrap_or_else(|e| e.into_inner());
        streams
            .values()
            .map(|c| counter(c).load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_sums_its_streams_and_streams_come_in_loop_order() {
        let stats = ProjectionStats::default();
        for (name, applied) in [
            ("MAPEK_PLAN", 2),
            ("MAPEK_MONITOR_10", 5),
            ("MAPEK_MONITOR_2", 3),
            ("MAPEK_MONITOR_0", 4),
        ] {
            stats
                .of_stream(name)
                .applied
                .fetch_add(applied, Ordering::Relaxed);
        }
        assert_eq!(stats.phase(Phase::Monitor).applied, 12);
        assert_eq!(stats.phase(Phase::Plan).applied, 2);
        assert_eq!(stats.phase(Phase::Analyze), Counts::default());
        assert_eq!(stats.stream("MAPEK_MONITOR_2").map(|c| c.applied), Some(3));
        assert_eq!(stats.stream("MAPEK_MONITOR"), None);
        let names: Vec<String> = stats.streams().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "MAPEK_MONITOR_0",
                "MAPEK_MONITOR_2",
                "MAPEK_MONITOR_10",
                "MAPEK_PLAN"
            ]
        );
        assert_eq!(stats.total(|c| &c.applied), 14);
    }
}
