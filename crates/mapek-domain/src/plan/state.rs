//! What the planner remembers: a fold of the symptoms it saw and the decisions it made.
//!
//! Cooldowns and the blast radius are judged from this history and the symptom's event time,
//! never from a clock, so a replay of the same log makes the same decisions. Everything is
//! kept in ordered maps and in log order, so nothing here depends on a hasher's seed.
//!
//! Fold symptoms with [`PlanState::observe`] and decisions with [`PlanState::apply`], in log
//! order (a decision right after the symptom it answers), which is what
//! [`Planner::decide`](super::Planner::decide) does. A worker that restarts rebuilds the state
//! by replaying its window of the analyze stream through the planner with the knowledge each
//! recorded decision consulted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::Policy;
use crate::{ActionKind, Decision, NodeId, Symptom, SymptomState};

/// An incident the planner saw open and has not seen resolve.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenIncident {
    /// The node it is on.
    pub node: NodeId,
    /// The rule of the latest decision taken on it, if any ([`super::NO_RULE`] when no rule
    /// matched): an update decides again only when it matches a stricter rule than this one.
    pub rule: Option<String>,
}

/// A decision that acts on a node, remembered for the blast radius.
#[derive(Clone, Debug, PartialEq)]
struct Acted {
    decision_id: String,
    ts_ms: i64,
    node: NodeId,
    incident_id: String,
    /// Its incident resolved: the action is no longer in flight, but it still counts toward
    /// the actions per window.
    closed: bool,
}

/// The planner's state: known nodes, open incidents, the last time each action was decided
/// for each node, and the actions decided within the blast-radius window.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanState {
    /// How long acted decisions are kept, in ms of event time: the blast-radius window.
    retain_ms: i64,
    /// The highest event time folded; decisions older than it minus `retain_ms` are dropped.
    watermark: Option<i64>,
    /// Every node seen in a symptom, as the node or its peer.
    nodes: BTreeSet<NodeId>,
    /// By incident id.
    incidents: BTreeMap<String, OpenIncident>,
    /// The latest decision time of each action on each node, for cooldowns.
    last: BTreeMap<(NodeId, ActionKind), i64>,
    /// Node-affecting decisions within the window, in log order.
    acted: VecDeque<Acted>,
}

impl PlanState {
    /// An empty state for `policy`: it keeps decisions as long as the policy's blast-radius
    /// window.
    pub fn new(policy: &Policy) -> Self {
        let window = policy.file().blast_radius.window_secs;
        Self {
            retain_ms: millis(window),
            watermark: None,
            nodes: BTreeSet::new(),
            incidents: BTreeMap::new(),
            last: BTreeMap::new(),
            acted: VecDeque::new(),
        }
    }

    /// Folds a symptom: its node and peer become known; an open incident is noted, a
    /// resolved one forgotten and its actions no longer counted in flight.
    pub fn observe(&mut self, symptom: &Symptom) {
        self.advance(symptom.ts_ms);
        self.know(&symptom.node);
        if let Some(peer) = &symptom.peer {
            self.know(peer);
        }
        match symptom.state {
            SymptomState::Open => {
                self.incidents
                    .entry(symptom.incident_id.clone())
                    .or_insert_with(|| OpenIncident {
                        node: symptom.node.clone(),
                        rule: None,
                    });
            }
            SymptomState::Update => {}
            SymptomState::Resolve => {
                self.incidents.remove(&symptom.incident_id);
                for a in &mut self.acted {
                    if a.incident_id == symptom.incident_id {
                        a.closed = true;
                    }
                }
            }
        }
    }

    /// Folds a decision: it starts its action's cooldown on its node, counts toward the
    /// blast radius unless it is an escalation, and becomes its incident's latest rule.
    /// Folding the same decision twice changes nothing more.
    pub fn apply(&mut self, decision: &Decision) {
        self.advance(decision.ts_ms);
        self.know(&decision.node);
        let incident = self
            .incidents
            .entry(decision.incident_id.clone())
            .or_insert_with(|| OpenIncident {
                node: decision.node.clone(),
                rule: None,
            });
        incident.rule = Some(decision.rule.clone());
        let kind = decision.action.kind;
        let last = self
            .last
            .entry((decision.node.clone(), kind))
            .or_insert(decision.ts_ms);
        *last = (*last).max(decision.ts_ms);
        let known = self
            .acted
            .iter()
            .any(|a| a.decision_id == decision.decision_id);
        if kind != ActionKind::Escalate && !known {
            self.acted.push_back(Acted {
                decision_id: decision.decision_id.clone(),
                ts_ms: decision.ts_ms,
                node: decision.node.clone(),
                incident_id: decision.incident_id.clone(),
                closed: false,
            });
        }
        self.prune();
    }

    /// How many distinct nodes have been seen in symptoms.
    pub fn known_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Whether `node` has been seen in a symptom.
    pub fn knows(&self, node: &NodeId) -> bool {
        self.nodes.contains(node)
    }

    /// The incident `id`, if it is open.
    pub fn incident(&self, id: &str) -> Option<&OpenIncident> {
        self.incidents.get(id)
    }

    /// Open incidents, by id.
    pub fn open_incidents(&self) -> impl Iterator<Item = (&str, &OpenIncident)> {
        self.incidents.iter().map(|(id, i)| (id.as_str(), i))
    }

    /// When `action` was last decided for `node`, in ms of event time.
    pub fn last_action(&self, node: &NodeId, action: ActionKind) -> Option<i64> {
        self.last.get(&(node.clone(), action)).copied()
    }

    /// The nodes with an action in flight at `now_ms`: decided less than `window_ms` before
    /// it (or after it, if the log was out of time order), on an incident not resolved since.
    pub fn in_flight(&self, now_ms: i64, window_ms: i64) -> BTreeSet<&NodeId> {
        let since = now_ms.saturating_sub(window_ms);
        self.acted
            .iter()
            .filter(|a| a.ts_ms > since && !a.closed)
            .map(|a| &a.node)
            .collect()
    }

    /// How many node-affecting actions were decided less than `window_ms` before `now_ms`
    /// (or after it), resolved or not.
    pub fn actions_within(&self, now_ms: i64, window_ms: i64) -> usize {
        let since = now_ms.saturating_sub(window_ms);
        self.acted.iter().filter(|a| a.ts_ms > since).count()
    }

    fn know(&mut self, node: &NodeId) {
        if !self.nodes.contains(node) {
            self.nodes.insert(node.clone());
        }
    }

    fn advance(&mut self, ts_ms: i64) {
        self.watermark = Some(self.watermark.map_or(ts_ms, |w| w.max(ts_ms)));
        self.prune();
    }

    /// Drops decisions that left the window as measured from the watermark: no symptom at or
    /// after the watermark can count them.
    fn prune(&mut self) {
        if let Some(w) = self.watermark {
            let since = w.saturating_sub(self.retain_ms);
            self.acted.retain(|a| a.ts_ms > since);
        }
    }
}

/// Seconds to milliseconds, saturating (policy seconds are bounded far below overflow).
pub(crate) fn millis(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}
