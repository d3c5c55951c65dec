//! What execute did, and what came of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Action, Event, non_empty};
use crate::{EventId, Invalid, NodeId, Phase};

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
/// Schema `ActionResult`, version 3 (version 1 had no `escalation`, version 2 no
/// `signature`).
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
    /// ML-DSA-65 signature by the executor's result key over [`ActionResult::result_hash`],
    /// so that what a result says (a refusal's escalation above all) cannot be changed or
    /// made up without the key; empty while unsigned, and in results written before
    /// executors signed (ADR 0019).
    #[serde(default, with = "serde_bytes")]
    pub signature: Vec<u8>,
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
    /// SHA-256, hex, over every field but the signature, each length-prefixed in schema
    /// order: what the executor signs. Pure, so the auditor computes the same hash from the
    /// stored result. An absent escalation and an escalation with no params hash apart: one
    /// tells nobody, the other tells a human.
    pub fn result_hash(&self) -> String {
        let mut h = EventId::builder("action-result")
            .str(&self.result_id)
            .str(&self.decision_id)
            .str(&self.incident_id)
            .str(self.node.as_str())
            .i64(self.ts_ms)
            .str(self.action.kind.as_str());
        h = optional(h, self.action.peer.as_ref().map(NodeId::as_str));
        h = optional(h, self.action.service.as_deref());
        h = params(h, Some(&self.action.params))
            .str(self.status.as_str())
            .str(&self.reason)
            .i64(i64::from(self.attempts))
            .i64(i64::from(self.dry_run));
        params(h, self.escalation.as_ref()).finish_256()
    }

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

    fields!(id: result_id, correlation: incident_id, causation: decision_id);

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

/// Adds an optional text: a marker of whether it is there, then the text, so that `None`
/// and `Some("")` hash apart.
fn optional(h: EventId, text: Option<&str>) -> EventId {
    match text {
        None => h.i64(0),
        Some(t) => h.i64(1).str(t),
    }
}

/// Adds an optional map: -1 when absent, else its length, then each key and value in order.
fn params(mut h: EventId, map: Option<&BTreeMap<String, String>>) -> EventId {
    let Some(map) = map else {
        return h.i64(-1);
    };
    h = h.i64(map.len() as i64);
    for (k, v) in map {
        h = h.str(k).str(v);
    }
    h
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

    fields!(id: outcome_id, correlation: incident_id, causation: decision_id);

    fn validate(&self) -> Result<(), Invalid> {
        non_empty("outcome_id", &self.outcome_id)?;
        non_empty("decision_id", &self.decision_id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ActionKind;

    fn refused() -> ActionResult {
        ActionResult {
            result_id: "r-1".into(),
            decision_id: "d-1".into(),
            incident_id: "i-1".into(),
            node: NodeId::new("n1").unwrap(),
            ts_ms: 1_795_867_200_000,
            action: Action {
                kind: ActionKind::Reroute,
                peer: Some(NodeId::new("n2").unwrap()),
                service: None,
                params: BTreeMap::from([("ttl_s".to_owned(), "600".to_owned())]),
            },
            status: ActionStatus::Refused,
            reason: "cooldown: n1 was acted on 10 s ago".into(),
            attempts: 0,
            dry_run: false,
            escalation: Some(BTreeMap::from([("team".to_owned(), "netops".to_owned())])),
            signature: Vec::new(),
        }
    }

    #[test]
    fn the_result_hash_is_the_same_for_the_same_result_and_leaves_out_the_signature() {
        let r = refused();
        let hash = r.result_hash();
        assert_eq!(hash.len(), 64);
        assert_eq!(refused().result_hash(), hash, "pure");
        let mut signed = r.clone();
        signed.signature = vec![1, 2, 3];
        assert_eq!(
            signed.result_hash(),
            hash,
            "the signature is not part of what it signs"
        );
    }

    #[test]
    fn any_change_to_a_result_changes_its_hash() {
        let r = refused();
        let hash = r.result_hash();
        let edits: [fn(&mut ActionResult); 17] = [
            |r| r.result_id.push('x'),
            |r| r.decision_id.push('x'),
            |r| r.incident_id.push('x'),
            |r| r.node = NodeId::new("n3").unwrap(),
            |r| r.ts_ms += 1,
            |r| r.action.kind = ActionKind::RateLimit,
            |r| r.action.peer = None,
            |r| r.action.service = Some(String::new()),
            |r| {
                r.action.params.insert("rate_pps".into(), "1".into());
            },
            |r| r.status = ActionStatus::Failed,
            |r| r.reason.push('!'),
            |r| r.attempts = 1,
            |r| r.dry_run = true,
            // A forged escalation: other params, no params, or none at all.
            |r| {
                r.escalation = Some(BTreeMap::from([("team".into(), "nobody".into())]));
            },
            |r| r.escalation = Some(BTreeMap::new()),
            |r| r.escalation = None,
            |r| {
                r.escalation = Some(BTreeMap::from([("tea".into(), "mnetops".into())]));
            },
        ];
        for edit in edits {
            let mut changed = r.clone();
            edit(&mut changed);
            assert_ne!(changed.result_hash(), hash, "{changed:?}");
        }
    }

    #[test]
    fn an_absent_service_and_an_empty_one_hash_apart_as_do_no_escalation_and_an_empty_one() {
        let mut a = refused();
        a.action.service = None;
        let mut b = refused();
        b.action.service = Some(String::new());
        assert_ne!(a.result_hash(), b.result_hash());
        let mut none = refused();
        none.escalation = None;
        none.action.params.clear();
        let mut empty = none.clone();
        empty.escalation = Some(BTreeMap::new());
        assert_ne!(none.result_hash(), empty.result_hash());
    }
}
