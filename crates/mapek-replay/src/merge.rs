//! One order for the records of a phase stored in several streams (telemetry split over
//! `MAPEK_MONITOR_0` …, ADR 0012).
//!
//! Records are taken by the time the server stored them; at the same millisecond, from the
//! stream that comes first in [`stream_key`] order. A record is taken only when it is the
//! earliest *head* of its stream, so each stream's own order (and with it each partition's and
//! each node's) is kept even where its stored times are not monotonic. The live streams and a
//! slice merge alike, on the millisecond stored times a slice keeps, so a replay of a slice
//! reads in the order a replay of the live streams did.

use std::borrow::Borrow;

use crate::record::Record;

/// The order streams are merged in when their heads were stored at the same millisecond:
/// by name, with a numeric suffix compared as a number (`MAPEK_MONITOR` first, then
/// `MAPEK_MONITOR_0`, `MAPEK_MONITOR_1`, …, `MAPEK_MONITOR_10`).
pub(crate) fn stream_key(name: &str) -> (&str, Option<usize>) {
    match mapek_bus::layout::monitor_index(name) {
        Some(index) => (mapek_domain::Phase::Monitor.stream(), Some(index)),
        None => (name, None),
    }
}

/// Which of `heads` (the next record of each stream, the streams in [`stream_key`] order; `None`
/// for a stream read to its end) comes next: the earliest stored, the first stream on a tie.
/// `None` when every stream is read.
pub(crate) fn earliest<R: Borrow<Record>>(heads: &[Option<R>]) -> Option<usize> {
    heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.as_ref().map(|r| (r.borrow().stored_ms, i)))
        .min()
        .map(|(_, i)| i)
}

/// Merges `streams` (each a stream's records in its own order, the streams in [`stream_key`]
/// order) into one, calling `each` with every record.
pub(crate) fn merge<'a>(streams: Vec<Vec<&'a Record>>, mut each: impl FnMut(&'a Record)) {
    if let [only] = streams.as_slice() {
        only.iter().for_each(|r| each(r));
        return;
    }
    let mut cursors: Vec<std::slice::Iter<'_, &'a Record>> =
        streams.iter().map(|s| s.iter()).collect();
    let mut heads: Vec<Option<&'a Record>> =
        cursors.iter_mut().map(|c| c.next().copied()).collect();
    while let Some(i) = earliest(&heads) {
        let next = cursors[i].next().copied();
        if let Some(r) = std::mem::replace(&mut heads[i], next) {
            each(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stream: &str, seq: u64, stored_ms: i64) -> Record {
        Record {
            stream: stream.to_owned(),
            seq,
            subject: format!("mapek.monitor.{seq}.n{seq}"),
            stored_ms,
            headers: None,
            body: Default::default(),
        }
    }

    #[test]
    fn streams_are_ordered_by_name_and_number() {
        let mut names = [
            "MAPEK_MONITOR_10",
            "MAPEK_MONITOR_2",
            "MAPEK_MONITOR",
            "MAPEK_MONITOR_0",
        ];
        names.sort_by_key(|n| stream_key(n));
        assert_eq!(
            names,
            [
                "MAPEK_MONITOR",
                "MAPEK_MONITOR_0",
                "MAPEK_MONITOR_2",
                "MAPEK_MONITOR_10"
            ]
        );
    }

    #[test]
    fn merged_streams_go_by_stored_time_then_stream_keeping_each_streams_order() {
        let zero = [
            record("MAPEK_MONITOR_0", 1, 10),
            record("MAPEK_MONITOR_0", 2, 20),
            // Stored "earlier" than the record before it (a clock stepped back): it still
            // comes after seq 2 of its stream.
            record("MAPEK_MONITOR_0", 3, 15),
            record("MAPEK_MONITOR_0", 4, 40),
        ];
        let one = [
            record("MAPEK_MONITOR_1", 1, 5),
            record("MAPEK_MONITOR_1", 2, 20),
            record("MAPEK_MONITOR_1", 3, 30),
        ];
        let mut got = Vec::new();
        merge(vec![zero.iter().collect(), one.iter().collect()], |r| {
            got.push((r.stream.as_str(), r.seq))
        });
        assert_eq!(
            got,
            [
                ("MAPEK_MONITOR_1", 1), // 5
                ("MAPEK_MONITOR_0", 1), // 10
                ("MAPEK_MONITOR_0", 2), // 20, stream 0 before stream 1 on a tie
                ("MAPEK_MONITOR_0", 3), // 15, after its stream's seq 2
                ("MAPEK_MONITOR_1", 2), // 20
                ("MAPEK_MONITOR_1", 3), // 30
                ("MAPEK_MONITOR_0", 4), // 40
            ]
        );
    }

    #[test]
    fn one_stream_is_read_as_it_is() {
        let only = [
            record("MAPEK_MONITOR", 1, 20),
            record("MAPEK_MONITOR", 2, 10),
        ];
        let mut got = Vec::new();
        merge(vec![only.iter().collect()], |r| got.push(r.seq));
        assert_eq!(got, [1, 2]);
        assert_eq!(earliest::<&Record>(&[None, None]), None);
    }
}
