//! Given / when / then for the plan phase.
//!
//! `given(policy, history)` runs earlier symptoms through a fresh [`Planner`] (they leave
//! their decisions in its state, as the live loop would); `.knowing(neighbours)` sets what the
//! knowledge answers next; `.when(symptom)` decides; `.then_expect(|decision| …)` checks what
//! it decided and returns the scenario so it can go on. Every decision made anywhere must
//! pass the Decision schema's own validation.

mod blast_radius;
mod cooldown;
mod lifecycle;
mod policy_file;
mod ranking;
mod replay;
mod rules;

use super::{Planner, Policy, RecordedKnowledge, Scope};
use crate::{ActionKind, Decision, Event, Neighbour, NodeId, Symptom, SymptomKind, SymptomState};

/// Far from any wall clock (2001-09-09), so a test that passes cannot lean on one.
pub(crate) const T0: i64 = 1_000_000_000_000;

/// A policy exercising every feature; tests that need another write their own.
///
/// 4 known nodes at least and 50 % of them: 2 nodes may be under action at once.
pub(crate) const POLICY: &str = r#"
name = "test"

[blast_radius]
window_secs = 600
max_node_percent = 50.0
min_known_nodes = 4
max_actions = 10

[knowledge]
neighbours = 5
min_score = 0.1

[fallback]
params = { team = "netops" }

[[rules]]
name = "lossy-link"
symptom = "packet_loss"
has_peer = true
[[rules.candidates]]
action = "reroute"
cooldown_secs = 300
[[rules.candidates]]
action = "rate_limit"
cooldown_secs = 600
rate_pps = 1000
params = { burst = "200" }
[[rules.candidates]]
action = "quarantine"
cooldown_secs = 3600

[[rules]]
name = "slow-severe"
symptom = "high_latency"
min_severity = 3.0
[[rules.candidates]]
action = "quarantine"
cooldown_secs = 3600
[rules.fallback]
params = { team = "sre", urgency = "page" }

[[rules]]
name = "slow"
symptom = "high_latency"
[[rules.candidates]]
action = "restart_service"
cooldown_secs = 900
service = "meshd"
[[rules.candidates]]
action = "rate_limit"
cooldown_secs = 600
rate_pps = 1000

[[rules]]
name = "pinned"
symptom = "cpu_saturation"
rank_by_knowledge = false
[[rules.candidates]]
action = "rate_limit"
cooldown_secs = 600
rate_pps = 500
[[rules.candidates]]
action = "escalate"
cooldown_secs = 0
"#;

/// A node id.
pub(crate) fn id(node: &str) -> NodeId {
    NodeId::new(node).unwrap()
}

/// `secs` seconds after [`T0`], in ms.
pub(crate) fn at(secs: i64) -> i64 {
    T0 + secs * 1000
}

/// The opening symptom of an incident of `kind` on `node`, `secs` seconds after [`T0`].
pub(crate) fn open(node: &str, kind: SymptomKind, secs: i64, severity: f64) -> Symptom {
    let incident_id = format!("inc-{node}-{}-{secs}", kind.as_str());
    Symptom {
        symptom_id: format!("{incident_id}-open"),
        incident_id,
        node: id(node),
        ts_ms: at(secs),
        kind,
        state: SymptomState::Open,
        severity,
        peer: None,
        evidence: [("value".to_owned(), severity)].into(),
        summary: format!("{} on {node}", kind.as_str()),
        caused_by: format!("telemetry-{node}-{secs}"),
    }
}

/// A link-scoped opening symptom: `kind` on the link from `node` to `peer`.
pub(crate) fn open_link(
    node: &str,
    peer: &str,
    kind: SymptomKind,
    secs: i64,
    severity: f64,
) -> Symptom {
    Symptom {
        peer: Some(id(peer)),
        ..open(node, kind, secs, severity)
    }
}

/// A later symptom of the same incident, `secs` seconds after [`T0`].
pub(crate) fn later(s: &Symptom, state: SymptomState, secs: i64, severity: f64) -> Symptom {
    Symptom {
        symptom_id: format!("{}-{}-{secs}", s.incident_id, state.as_str()),
        ts_ms: at(secs),
        state,
        severity,
        caused_by: format!("telemetry-{}-{secs}", s.node),
        ..s.clone()
    }
}

/// The update of `s`'s incident at `secs`, now at `severity`.
pub(crate) fn update(s: &Symptom, secs: i64, severity: f64) -> Symptom {
    later(s, SymptomState::Update, secs, severity)
}

/// The resolution of `s`'s incident at `secs`.
pub(crate) fn resolve(s: &Symptom, secs: i64) -> Symptom {
    later(s, SymptomState::Resolve, secs, 0.5)
}

/// A past incident the knowledge returns.
pub(crate) fn past(incident: &str, score: f64, action: ActionKind, resolved: bool) -> Neighbour {
    Neighbour {
        incident_id: incident.to_owned(),
        score,
        action,
        resolved,
    }
}

/// A scenario: a planner, what its knowledge answers, and the latest decision.
pub(crate) struct Scenario {
    pub(crate) planner: Planner,
    knowledge: RecordedKnowledge,
    decision: Option<Decision>,
    /// Every decision made, history included, in order.
    pub(crate) decisions: Vec<Decision>,
}

/// A planner with `policy`, after deciding on `history` (with no knowledge).
pub(crate) fn given(policy: &str, history: impl IntoIterator<Item = Symptom>) -> Scenario {
    let policy = Policy::parse(policy).expect("test policy parses");
    let mut s = Scenario {
        planner: Planner::new(policy),
        knowledge: RecordedKnowledge::default(),
        decision: None,
        decisions: Vec::new(),
    };
    for symptom in history {
        s = s.when(symptom);
    }
    s.decision = None;
    s
}

impl Scenario {
    /// From now on the knowledge answers `neighbours`.
    pub(crate) fn knowing(mut self, neighbours: Vec<Neighbour>) -> Self {
        self.knowledge = RecordedKnowledge::new(neighbours);
        self
    }

    /// Decides on `symptom`.
    pub(crate) fn when(mut self, symptom: Symptom) -> Self {
        self.decision = self.planner.decide(&symptom, &self.knowledge);
        if let Some(d) = &self.decision {
            d.validate()
                .expect("every decision passes its schema's checks");
            self.decisions.push(d.clone());
        }
        self
    }

    /// Checks the latest decision (or its absence).
    pub(crate) fn then_expect(self, check: impl FnOnce(Option<&Decision>)) -> Self {
        check(self.decision.as_ref());
        self
    }

    /// Checks that the latest symptom was decided with `action`; returns the decision.
    pub(crate) fn then_chooses(self, action: ActionKind) -> Decision {
        let d = self.decision.expect("a decision");
        assert_eq!(d.action.kind, action, "reason: {}", d.reason);
        d
    }

    /// Checks that the latest symptom was not decided.
    pub(crate) fn then_nothing(self) -> Self {
        assert_eq!(self.decision, None);
        self
    }
}
