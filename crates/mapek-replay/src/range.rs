//! Which part of the log a replay compares: a range of event time.
//!
//! State is a fold of the whole log, so a replay always reads each stream from its first
//! message (the analyzer's windows, baselines and silence watermark, and the planner's
//! cooldowns and open incidents all reach back): the range only says which symptoms and
//! decisions are compared and reported. Event time is the one clock every phase agrees on; a
//! stream sequence on the command line means the event time of the telemetry stored there
//! (a bare one, of `MAPEK_MONITOR`; `MAPEK_MONITOR_1:1200` when telemetry is split over several
//! streams, each with its own sequences).

use serde::{Deserialize, Serialize};

/// Inclusive bounds on event time, in milliseconds since the Unix epoch; `None` is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The earliest event time compared.
    pub from_ms: Option<i64>,
    /// The latest event time compared.
    pub to_ms: Option<i64>,
}

impl Range {
    /// The whole log.
    pub const ALL: Range = Range {
        from_ms: None,
        to_ms: None,
    };

    /// Whether an event at `ts_ms` lies in the range.
    pub fn contains(&self, ts_ms: i64) -> bool {
        self.from_ms.is_none_or(|f| ts_ms >= f) && self.to_ms.is_none_or(|t| ts_ms <= t)
    }

    /// Each bound of `self`, or else of `other`.
    pub fn or(self, other: Range) -> Range {
        Range {
            from_ms: self.from_ms.or(other.from_ms),
            to_ms: self.to_ms.or(other.to_ms),
        }
    }
}

/// A bound as a user gives it: an event time, or a sequence of a telemetry stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Milliseconds since the Unix epoch.
    Time(i64),
    /// A sequence of *the* telemetry stream, `MAPEK_MONITOR`: the event time of the telemetry
    /// stored there. Refused when telemetry is split over several streams (ADR 0012), where a
    /// sequence means nothing without its stream.
    Seq(u64),
    /// A sequence of a named telemetry stream (`MAPEK_MONITOR_1:1200`): the event time of the
    /// telemetry stored there.
    StreamSeq {
        /// The stream: `MAPEK_MONITOR` or `MAPEK_MONITOR_<n>`.
        stream: String,
        /// Its sequence there.
        seq: u64,
    },
}

/// An event time as RFC 3339 with milliseconds, for people (`2026-11-28T12:00:00.25Z`); the
/// bare number if it is out of range.
pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
