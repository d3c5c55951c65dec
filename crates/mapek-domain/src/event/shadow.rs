//! Shadow decisions: what a candidate policy would have decided on a live symptom.

use serde::{Deserialize, Serialize};

use super::Event;
use crate::{Decision, Invalid, NodeId, Phase};

/// A decision a candidate policy took on a live symptom, published on `mapek.shadow.<node>`
/// and stored in MAPEK_SHADOW, never on the decisions' subjects (ADR 0020): no executor reads
/// it, it is not signed, and it is not in the decision chain `mapek audit verify` checks.
/// Its body is a [`Decision`] (schema `Decision`), whose `policy_name` and `policy_hash` say
/// which candidate took it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShadowDecision(pub Decision);

impl ShadowDecision {
    /// The name of the plan workers deciding with the candidate policy named `policy`, and of
    /// their consumers (`shadow-<policy>-p3`) and leases.
    pub fn workers(policy: &str) -> String {
        format!("shadow-{policy}")
    }
}

impl From<Decision> for ShadowDecision {
    fn from(d: Decision) -> Self {
        Self(d)
    }
}

impl Event for ShadowDecision {
    const SCHEMA: &'static str = Decision::SCHEMA;
    const PHASE: Phase = Phase::Shadow;

    fn event_id(&self) -> &str {
        self.0.event_id()
    }

    fn node(&self) -> &NodeId {
        self.0.node()
    }

    fn correlation(&self) -> Option<&str> {
        self.0.correlation()
    }

    fn causation(&self) -> Option<&str> {
        self.0.causation()
    }

    fn ts_ms(&self) -> i64 {
        self.0.ts_ms()
    }

    fn validate(&self) -> Result<(), Invalid> {
        self.0.validate()
    }
}
