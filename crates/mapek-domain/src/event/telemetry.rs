//! Telemetry: what a node reports about itself and its links.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Event, at_most, finite, fraction, name, non_empty};
use crate::{EventId, Invalid, NodeId, Phase};

/// The most metrics one telemetry event may carry.
pub const MAX_METRICS: usize = 256;
/// The most link samples one telemetry event may carry.
pub const MAX_LINKS: usize = 256;

/// One sample of a node's health, published on `mapek.monitor.<node>`.
///
/// Schema `Telemetry`, version 2 (`schemas/telemetry.v2.avsc`); version 1 lacks `site`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The event id. Deterministic by default ([`Telemetry::content_id`]) so a retried
    /// publish of the same sample is stored once.
    pub event_id: String,
    /// The reporting node.
    pub node: NodeId,
    /// When the sample was taken, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Named gauges: `latency_ms`, `loss` (0..1), `cpu` (0..1), `mem` (0..1), and any other.
    /// Known names are range-checked; others need only be finite.
    pub metrics: BTreeMap<String, f64>,
    /// The node's view of each link to a neighbour.
    #[serde(default)]
    pub links: Vec<LinkSample>,
    /// The site or rack the node is in, so blast-radius limits can count nodes per site.
    /// Added in version 2; absent in version 1 data.
    #[serde(default)]
    pub site: Option<String>,
}

/// A node's view of one link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSample {
    /// The neighbour at the other end.
    pub peer: NodeId,
    /// Whether the link is up.
    pub up: bool,
    /// Round-trip latency over the link, in milliseconds.
    pub latency_ms: f64,
    /// Fraction of packets lost over the link (0..1).
    pub loss: f64,
}

impl Telemetry {
    /// A sample with a content-derived id: the same node, time and values give the same id.
    pub fn new(node: NodeId, ts_ms: i64, metrics: BTreeMap<String, f64>) -> Self {
        let mut t = Self {
            event_id: String::new(),
            node,
            ts_ms,
            metrics,
            links: Vec::new(),
            site: None,
        };
        t.event_id = t.content_id();
        t
    }

    /// The id this sample gets when its publisher gives none: a hash of everything in it
    /// but the id. Publishing the same sample twice then stores it once.
    pub fn content_id(&self) -> String {
        let mut id = EventId::builder("telemetry")
            .str(self.node.as_str())
            .i64(self.ts_ms);
        for (k, v) in &self.metrics {
            id = id.str(k).f64(*v);
        }
        for l in &self.links {
            id = id
                .str(l.peer.as_str())
                .i64(l.up as i64)
                .f64(l.latency_ms)
                .f64(l.loss);
        }
        if let Some(site) = &self.site {
            id = id.str(site);
        }
        id.finish()
    }
}

impl Event for Telemetry {
    const SCHEMA: &'static str = "Telemetry";
    const PHASE: Phase = Phase::Monitor;

    fields!(id: event_id);

    fn validate(&self) -> Result<(), Invalid> {
        non_empty("event_id", &self.event_id)?;
        if self.ts_ms < 0 {
            return Err(Invalid::OutOfRange {
                field: "ts_ms".into(),
                value: self.ts_ms as f64,
                range: "a time after 1970-01-01",
            });
        }
        at_most("metrics", self.metrics.len(), MAX_METRICS)?;
        at_most("links", self.links.len(), MAX_LINKS)?;
        // Every sample passes here twice (published, consumed): the checks run on the values
        // alone, and only a failing one names its field (a formatted string each).
        for (k, &v) in &self.metrics {
            name("metric name", k)?;
            let fine = match k.as_str() {
                "loss" | "cpu" | "mem" => (0.0..=1.0).contains(&v),
                "latency_ms" => v.is_finite() && v >= 0.0,
                _ => v.is_finite(),
            };
            if !fine {
                check_metric(k, v)?;
            }
        }
        for l in &self.links {
            if !(l.latency_ms.is_finite() && (0.0..=1.0).contains(&l.loss)) {
                let peer = l.peer.as_str();
                finite(&format!("link {peer} latency_ms"), l.latency_ms)?;
                fraction(&format!("link {peer} loss"), l.loss)?;
            }
        }
        if let Some(site) = &self.site {
            name("site", site)?;
        }
        Ok(())
    }
}

/// Checks metric `k` of value `v`, naming it in the error; [`Telemetry::validate`] calls it
/// only for a value its quick check refused.
fn check_metric(k: &str, v: f64) -> Result<(), Invalid> {
    let field = format!("metric {k}");
    match k {
        "loss" | "cpu" | "mem" => fraction(&field, v),
        "latency_ms" if v < 0.0 => Err(Invalid::OutOfRange {
            field,
            value: v,
            range: "at least 0",
        }),
        _ => finite(&field, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metrics: &[(&str, f64)]) -> Telemetry {
        let m = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Telemetry::new(NodeId::new("n1").unwrap(), 1_700_000_000_000, m)
    }

    #[test]
    fn the_same_sample_gets_the_same_id() {
        let a = sample(&[("latency_ms", 12.5)]);
        let b = sample(&[("latency_ms", 12.5)]);
        let c = sample(&[("latency_ms", 12.6)]);
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.event_id, c.event_id);
    }

    #[test]
    fn nan_infinite_and_out_of_range_metrics_are_refused_by_name() {
        let cases = [
            (("latency_ms", f64::NAN), "metric latency_ms is NaN"),
            (("jitter", f64::INFINITY), "metric jitter is inf"),
            (
                ("loss", 1.5),
                "metric loss is 1.5, but must be between 0 and 1",
            ),
            (("latency_ms", -1.0), "must be at least 0"),
        ];
        for ((k, v), want) in cases {
            let err = sample(&[(k, v)]).validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn metric_names_are_checked() {
        let err = sample(&[("bad name", 1.0)]).validate().unwrap_err();
        assert!(err.to_string().contains("invalid metric name"), "{err}");
    }
}
