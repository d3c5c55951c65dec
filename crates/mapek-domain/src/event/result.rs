//! What execute did, and what came of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Action, Event, non_empty};
use crate::{Invalid, NodeId, Phase};

/// How an action attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// The node agent applied it.
    Applied,
    /// The node agent failed it, or never answered.
    Failed,
    /// An interlock refused it before it reached the node.
    Refused,
}

impl ActionStatus {
    /// The schema symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Applied => "applied",
            ActionStatus::Failed => "failed",
            ActionStatus::Refused => "refused",
        }
    }
}

/// The result of acting on a decision, published on `mapek.execute.<node>`.
/// Schema `ActionResult`, version 2 (version 1 had no `escalation`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionResult {
    /// Deterministic from the decision id.
    pub result_id: String,
    /// The decision acted on (`Mapek-Causation`).
    pub decision_id: String,
    /// The incident (`Mapek-Correlation`).
    pub incident_id: String,
    /// The node acted on.
    pub node: NodeId,
    /// When the attempt ended, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The action, as decided.
    pub action: Action,
    /// Applied, failed or refused.
    pub status: ActionStatus,
    /// Why it failed or was refused (the interlock, the agent's error); empty when applied.
    pub reason: String,
    /// How many requests were sent to the node agent.
    pub attempts: i32,
    /// Whether the executor ran in dry-run mode (nothing was sent).
    pub dry_run: bool,
    /// A refused action handed to a human: the escalation's params (the fallback of the rule
    /// that decided it, or of its policy). `None` when nothing was refused, or the policy
    /// records refusals only.
    #[serde(default)]
    pub escalation: Option<BTreeMap<String, String>>,
}

/// An escalation's params in words, for people: `escalated to a human (team=netops)`.
pub fn escalation_in_words(params: &BTreeMap<String, String>) -> String {
    if params.is_empty() {
        return "escalated to a human".to_owned();
    }
    let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("escalated to a human ({})", params.join(", "))
}

/// `reason`, followed by `escalation` in words if there was one: how people read a refusal.
pub fn with_escalation(reason: &str, escalation: Option<&BTreeMap<String, String>>) -> String {
    match escalation {
        Some(params) => format!("{reason}; {}", escalation_in_words(params)),
        None => reason.to_owned(),
    }
}

impl ActionResult {
    /// The escalation in words, for people: `escalated to a human (team=netops)`; `None`
    /// when nothing was escalated.
    pub fn escalation_words(&self) -> Option<String> {
        self.escalation.as_ref().map(escalation_in_words)
    }

    /// The reason, followed by the escalation if there was one.
    pub fn reason_and_escalation(&self) -> String {
        with_escalation(&self.reason, self.escalation.as_ref())
    }
}

impl Event for ActionResult {
    const SCHEMA: &'static str = "ActionResult";
    const PHASE: Phase = Phase::Execute;

    fn event_id(&self) -> &str {
        &self.result_id
    }

    fn node(&self) -> &NodeId {
        &self.node
    }

    fn correlation(&self) -> Option<&str> {
        Some(&self.incident_id)
    }

    fn causation(&self) -> Option<&str> {
        Some(&self.decision_id)
    }

    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    fn validate(&self) -> Result<(), Invalid> {
        non_empty("result_id", &self.result_id)?;
        non_empty("decision_id", &self.decision_id)?;
        if self.escalation.is_some() && self.status != ActionStatus::Refused {
            return Err(Invalid::Name {
                field: "escalation of a result with status",
                name: self.status.as_str().to_owned(),
                why: "only a refused action is escalated",
            });
        }
        if self.attempts < 0 {
            return Err(Invalid::OutOfRange {
                field: "attempts".into(),
                value: self.attempts.into(),
                range: "at least 0",
            });
        }
        Ok(())
    }
}

/// Whether an action cleared its symptom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeResult {
    /// The symptom resolved within the evaluation window.
    Resolved,
    /// It did not.
    NotResolved,
}

impl OutcomeResult {
    /// The schema symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeResult::Resolved => "resolved",
            OutcomeResult::NotResolved => "not_resolved",
        }
    }
}

/// What came of an action, published on `mapek.knowledge.<node>`. Schema `Outcome`, version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// Deterministic from the decision id.
    pub outcome_id: String,
    /// The decision whose action is judged (`Mapek-Causation`).
    pub decision_id: String,
    /// The incident (`Mapek-Correlation`).
    pub incident_id: String,
    /// The node.
    pub node: NodeId,
    /// When the judgement was made, in milliseconds since the Unix epoch (event time).
    pub ts_ms: i64,
    /// Resolved or not.
    pub result: OutcomeResult,
    /// From the incident's opening to its resolution, when it resolved.
    #[serde(default)]
    pub recovery_ms: Option<i64>,
    /// One readable line on what was observed.
    pub detail: String,
}

impl Event for Outcome {
    const SCHEMA: &'static str = "Outcome";
    const PHASE: Phase = Phase::Knowledge;

    fn event_id(&self) -> &str {
        &self.outcome_id
    }

    fn node(&self) -> &NodeId {
        &self.node
    }

    fn correlation(&self) -> Option<&str> {
        Some(&self.incident_id)
    }

    fn causation(&self) -> Option<&str> {
        Some(&self.decision_id)
    }

    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    fn validate(&self) -> Result<(), Invalid> {
        non_empty("outcome_id", &self.outcome_id)?;
        non_empty("decision_id", &self.decision_id)?;
        Ok(())
    }
}
