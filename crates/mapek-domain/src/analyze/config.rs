//! The analyze phase's settings: window length, hysteresis and one threshold per detector.
//!
//! Read from the `[analyze]` table of the config file. Every field has a default, so an empty
//! table is a working config; an unknown field is an error, so a misspelt threshold is never
//! silently ignored.

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// The most samples a window may hold: link transitions are kept as bits of a `u64`.
pub const MAX_WINDOW: usize = 64;

/// How the analyze phase turns telemetry into symptoms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyzeConfig {
    /// How many of a node's latest samples each window holds (1 to 64). Longer windows smooth
    /// more and react later; each sample costs 4 bytes per metric per node.
    pub window: usize,
    /// Consecutive breaching evaluations before an incident opens, so one bad sample is not an
    /// incident.
    pub open_after: u16,
    /// Consecutive clean evaluations before an open incident resolves, so an incident does
    /// not close and reopen while a value hovers at its threshold.
    pub resolve_after: u16,
    /// How much an open incident's severity must change, relative to the last severity sent,
    /// before an update is sent (0.2 = 20 %): enough to tell the planner, not every sample.
    pub update_ratio: f64,
    /// How often, in event time, an open incident whose evidence has not changed is restated
    /// with an update (0: never). Followers see that it is still open, and the evaluation of
    /// an action on it sees time go by, even when no other symptom is sent.
    pub update_every_ms: i64,
    /// Which percentile of the latency window is judged (95 = p95, nearest rank): a high
    /// percentile ignores a single outlier but not a tail.
    pub latency_percentile: f64,
    /// Latency above which a node or one of its links is slow whatever its history, in ms.
    pub latency_threshold_ms: f64,
    /// A node is also slow when its latency percentile exceeds its own baseline times this:
    /// a node that usually answers in 5 ms is in trouble at 40 ms, far below the absolute
    /// threshold.
    pub baseline_factor: f64,
    /// Weight of the newest non-breaching sample in the baseline's moving average. Small, so
    /// the baseline follows slow drift but not an incident.
    pub baseline_alpha: f64,
    /// Samples the baseline must have seen before it is used, so a node's first few samples
    /// do not become its normal.
    pub baseline_min_samples: u32,
    /// The baseline counts as at least this, in ms, so a node idling near 0 ms does not turn
    /// jitter into an incident.
    pub baseline_floor_ms: f64,
    /// Packet loss (0..1) at or above which the window mean, or one link, is lossy.
    pub loss_threshold: f64,
    /// CPU use (0..1) at or above which the window mean is saturated.
    pub cpu_threshold: f64,
    /// Memory use (0..1) at or above which the window mean is saturated.
    pub mem_threshold: f64,
    /// Event time without telemetry from a node after which it is silent, in ms. Measured
    /// against the highest timestamp seen from any node, never the wall clock, so a replay
    /// finds the same silences.
    pub silent_after_ms: u64,
    /// Up/down transitions of one link within the window at which the link is flapping.
    pub flap_transitions: u32,
    /// Weight of the newest sample in a link's moving averages of latency and loss: links are
    /// kept as averages rather than windows to keep per-node state small.
    pub link_alpha: f64,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        Self {
            window: 20,
            open_after: 3,
            resolve_after: 5,
            update_ratio: 0.2,
            update_every_ms: 10_000,
            latency_percentile: 95.0,
            latency_threshold_ms: 100.0,
            baseline_factor: 3.0,
            baseline_alpha: 0.05,
            baseline_min_samples: 20,
            baseline_floor_ms: 5.0,
            loss_threshold: 0.05,
            cpu_threshold: 0.9,
            mem_threshold: 0.95,
            silent_after_ms: 30_000,
            flap_transitions: 4,
            link_alpha: 0.2,
        }
    }
}

impl AnalyzeConfig {
    /// Checks every field against its range; the error names the field, the value and the
    /// range, so it can be shown to a user as it is.
    pub fn validate(&self) -> Result<(), Invalid> {
        let window = self.window as f64;
        check("window", window, "between 1 and 64", |_| {
            (1..=MAX_WINDOW).contains(&self.window)
        })?;
        check("open_after", self.open_after.into(), "at least 1", |x| {
            x >= 1.0
        })?;
        check(
            "resolve_after",
            self.resolve_after.into(),
            "at least 1",
            |x| x >= 1.0,
        )?;
        check("update_ratio", self.update_ratio, "above 0", |x| x > 0.0)?;
        check(
            "update_every_ms",
            self.update_every_ms as f64,
            "0 or more",
            |x| x >= 0.0,
        )?;
        let pct = self.latency_percentile;
        check("latency_percentile", pct, "above 0 and at most 100", |x| {
            x > 0.0 && x <= 100.0
        })?;
        let ms = self.latency_threshold_ms;
        check("latency_threshold_ms", ms, "above 0", |x| x > 0.0)?;
        check("baseline_factor", self.baseline_factor, "above 1", |x| {
            x > 1.0
        })?;
        check(
            "baseline_alpha",
            self.baseline_alpha,
            "above 0 and at most 1",
            unit,
        )?;
        let floor = self.baseline_floor_ms;
        check("baseline_floor_ms", floor, "above 0", |x| x > 0.0)?;
        check(
            "loss_threshold",
            self.loss_threshold,
            "above 0 and at most 1",
            unit,
        )?;
        check(
            "cpu_threshold",
            self.cpu_threshold,
            "above 0 and at most 1",
            unit,
        )?;
        check(
            "mem_threshold",
            self.mem_threshold,
            "above 0 and at most 1",
            unit,
        )?;
        let silent = self.silent_after_ms as f64;
        // Bounded so that it fits event-time arithmetic in i64 with room to spare.
        check("silent_after_ms", silent, "between 1 and 10^12", |x| {
            (1.0..=1e12).contains(&x)
        })?;
        check("link_alpha", self.link_alpha, "above 0 and at most 1", unit)?;
        // A window of n samples holds n - 1 transitions; a higher threshold could never fire.
        let flaps = self.flap_transitions.into();
        check("flap_transitions", flaps, "between 1 and window - 1", |x| {
            x >= 1.0 && x < window
        })?;
        Ok(())
    }
}

fn unit(x: f64) -> bool {
    x > 0.0 && x <= 1.0
}

fn check(
    field: &str,
    value: f64,
    range: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Result<(), Invalid> {
    if value.is_finite() && ok(value) {
        Ok(())
    } else {
        Err(Invalid::OutOfRange {
            field: field.to_owned(),
            value,
            range,
        })
    }
}
