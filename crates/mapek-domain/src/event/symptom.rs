//! Symptoms: what analyze found in a node's telemetry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Event, finite, non_empty};
use crate::{Invalid, NodeId, Phase};

/// What kind of trouble a symptom reports. One incident is open per node and kind at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymptomKind {
    /// Latency over its threshold or the node's own baseline.
    HighLatency,
    /// Packet loss over its threshold.
    PacketLoss,
    /// No telemetry for too long, by event time.
    NodeSilent,
    /// CPU saturated.
    CpuSaturation,
    /// Memory saturated.
    MemorySaturation,
    /// A link going up and down.
    LinkFlapping,
}

impl SymptomKind {
    /// Every kind, in schema order.
    pub const ALL: [SymptomKind; 6] = [
        SymptomKind::HighLatency,
        SymptomKind::PacketLoss,
        SymptomKind::NodeSilent,
        SymptomKind::CpuSaturation,
        SymptomKind::MemorySaturation,
        SymptomKind::LinkFlapping,
    ];

    /// The schema symbol: `high_latency`, …
    pub fn as_str(self) -> &'static str {
        match self {
            SymptomKind::HighLatency => "high_latency",
            SymptomKind::PacketLoss => "packet_loss",
            SymptomKind::NodeSilent => "node_silent",
            SymptomKind::CpuSaturation => "cpu_saturation",
            SymptomKind::MemorySaturation => "memory_saturation",
            SymptomKind::LinkFlapping => "link_flapping",
        }
    }
}

/// Where a symptom stands in its incident's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymptomState {
    /// The first symptom of an incident.
    Open,
    /// The incident is still open and its evidence changed.
    Update,
    /// The incident cleared.
    Resolve,
}

impl SymptomState {
    /// The schema symbol: `open`, `update`, `resolve`.
    pub fn as_str(self) -> &'static str {
        match self {
            SymptomState::Open => "open",
            SymptomState::Update => "update",
            SymptomState::Resolve => "resolve",
        }
    }
}

/// A symptom, published on `mapek.analyze.<node>`. Schema `Symptom`, version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symptom {
    /// The symptom id: deterministic from the incident and the telemetry that caused it.
    pub symptom_id: String,
    /// The incident this symptom belongs to (`Mapek-Correlation`).
    pub incident_id: String,
    /// The node it is about.
    pub node: NodeId,
    /// Event time of the telemetry that caused it, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// What kind of trouble.
    pub kind: SymptomKind,
    /// Open, update or resolve.
    pub state: SymptomState,
    /// How bad, as a multiple of the threshold (1.0 = at the threshold).
    pub severity: f64,
    /// The neighbour at the other end, for link-scoped symptoms.
    #[serde(default)]
    pub peer: Option<NodeId>,
    /// The window statistics the detector decided on (`p95_latency_ms`, `baseline_ms`, …):
    /// the evidence a decision and a replay can point to.
    pub evidence: BTreeMap<String, f64>,
    /// One readable line: what crossed which threshold.
    pub summary: String,
    /// The id of the telemetry event that tipped the detector (`Mapek-Causation`).
    pub caused_by: String,
}

impl Event for Symptom {
    const SCHEMA: &'static str = "Symptom";
    const PHASE: Phase = Phase::Analyze;

    fields!(id: symptom_id, correlation: incident_id, causation: caused_by);

    fn validate(&self) -> Result<(), Invalid> {
        non_empty("symptom_id", &self.symptom_id)?;
        non_empty("incident_id", &self.incident_id)?;
        finite("severity", self.severity)?;
        for (k, v) in &self.evidence {
            finite(&format!("evidence {k}"), *v)?;
        }
        Ok(())
    }
}
