//! Decisions: what plan chose to do about a symptom, and why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Event, finite, non_empty};
use crate::{EventId, Invalid, NodeId, Phase};

/// The actions mapek can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Route the node's traffic around a peer.
    Reroute,
    /// Restart a service on the node.
    RestartService,
    /// Take the node out of the mesh.
    Quarantine,
    /// Limit the node's traffic rate.
    RateLimit,
    /// Hand the incident to a human; no action on the node.
    Escalate,
}

impl ActionKind {
    /// Every action kind, in schema order.
    pub const ALL: [ActionKind; 5] = [
        ActionKind::Reroute,
        ActionKind::RestartService,
        ActionKind::Quarantine,
        ActionKind::RateLimit,
        ActionKind::Escalate,
    ];

    /// The kind whose schema symbol is `s` ([`ActionKind::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The schema symbol: `reroute`, …
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Reroute => "reroute",
            ActionKind::RestartService => "restart_service",
            ActionKind::Quarantine => "quarantine",
            ActionKind::RateLimit => "rate_limit",
            ActionKind::Escalate => "escalate",
        }
    }
}

/// An action and its target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What to do.
    pub kind: ActionKind,
    /// The peer to route around, for [`ActionKind::Reroute`].
    #[serde(default)]
    pub peer: Option<NodeId>,
    /// The service to restart, for [`ActionKind::RestartService`].
    #[serde(default)]
    pub service: Option<String>,
    /// Further parameters from the policy (`rate_pps`, …), passed to the node agent as given.
    pub params: BTreeMap<String, String>,
}

/// A past incident the planner consulted: the knowledge a decision depended on, recorded so
/// that a replay can feed it back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbour {
    /// The past incident.
    pub incident_id: String,
    /// Its similarity to this one (higher is closer).
    pub score: f64,
    /// The action taken then.
    pub action: ActionKind,
    /// Whether that action resolved it.
    pub resolved: bool,
}

/// A decision, published on `mapek.plan.<node>`. Schema `Decision`, version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The decision id: a hash of the symptom id and the policy hash, so a retried or replayed
    /// decision dedups instead of doubling.
    pub decision_id: String,
    /// The symptom decided on (`Mapek-Causation`).
    pub symptom_id: String,
    /// The incident (`Mapek-Correlation`).
    pub incident_id: String,
    /// The node acted on.
    pub node: NodeId,
    /// Event time of the symptom, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// What to do.
    pub action: Action,
    /// The policy rule that chose the candidates.
    pub rule: String,
    /// Why, in one readable sentence.
    pub reason: String,
    /// The policy's name.
    pub policy_name: String,
    /// SHA-256 of the policy file's content, hex: which policy, exactly.
    pub policy_hash: String,
    /// The past incidents consulted, nearest first; empty when none were.
    pub knowledge: Vec<Neighbour>,
    /// [`Decision::chain_hash`] of the previous decision of the same planner (one chain per
    /// plan partition), hex; empty for the first. A decision removed from, inserted into or
    /// altered in the log breaks the chain.
    pub prev_hash: String,
    /// ML-DSA-65 signature over [`Decision::chain_hash`]; empty while unsigned.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Decision {
    /// SHA-256, hex, over every field but the signature, each length-prefixed in schema order:
    /// what the next decision's `prev_hash` holds and what the signature signs. Pure, so a
    /// replay that reproduces a decision reproduces its chain.
    pub fn chain_hash(&self) -> String {
        let mut h = EventId::builder("decision-chain")
            .str(&self.decision_id)
            .str(&self.symptom_id)
            .str(&self.incident_id)
            .str(self.node.as_str())
            .i64(self.ts_ms)
            .str(self.action.kind.as_str())
            .str(self.action.peer.as_ref().map_or("", |p| p.as_str()))
            .str(self.action.service.as_deref().unwrap_or(""))
            .i64(self.action.params.len() as i64);
        for (k, v) in &self.action.params {
            h = h.str(k).str(v);
        }
        h = h
            .str(&self.rule)
            .str(&self.reason)
            .str(&self.policy_name)
            .str(&self.policy_hash)
            .i64(self.knowledge.len() as i64);
        for n in &self.knowledge {
            h = h
                .str(&n.incident_id)
                .f64(n.score)
                .str(n.action.as_str())
                .i64(i64::from(n.resolved));
        }
        h.str(&self.prev_hash).finish_256()
    }
}

impl Event for Decision {
    const SCHEMA: &'static str = "Decision";
    const PHASE: Phase = Phase::Plan;

    fields!(id: decision_id, correlation: incident_id, causation: symptom_id);

    fn validate(&self) -> Result<(), Invalid> {
        non_empty("decision_id", &self.decision_id)?;
        non_empty("symptom_id", &self.symptom_id)?;
        non_empty("incident_id", &self.incident_id)?;
        non_empty("policy_hash", &self.policy_hash)?;
        for n in &self.knowledge {
            finite("knowledge score", n.score)?;
        }
        Ok(())
    }
}
