//! One valid sample of every event type.

use std::collections::BTreeMap;

use mapek_domain::{
    Action, ActionKind, ActionResult, ActionStatus, Decision, LinkSample, Neighbour, NodeId,
    Outcome, OutcomeResult, Rejected, Symptom, SymptomKind, SymptomState, Telemetry,
};

/// 2026-11-28T12:00:00Z, in milliseconds: the time of every sample.
pub const TS_MS: i64 = 1_795_867_200_000;

/// A node id.
pub fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("a valid sample node id")
}

/// Telemetry from `node` at `ts_ms` with a latency and a loss, and one link.
pub fn telemetry(node_id: &str, ts_ms: i64, latency_ms: f64) -> Telemetry {
    let metrics = BTreeMap::from([
        ("latency_ms".to_owned(), latency_ms),
        ("loss".to_owned(), 0.01),
        ("cpu".to_owned(), 0.35),
    ]);
    let mut t = Telemetry::new(node(node_id), ts_ms, metrics);
    t.links = vec![LinkSample {
        peer: node("n2"),
        up: true,
        latency_ms: 3.5,
        loss: 0.0,
    }];
    t.site = Some("dc1".to_owned());
    t.event_id = t.content_id();
    t
}

/// A symptom opening a high-latency incident on n1.
pub fn symptom() -> Symptom {
    Symptom {
        symptom_id: "s-1".into(),
        incident_id: "i-1".into(),
        node: node("n1"),
        ts_ms: TS_MS,
        kind: SymptomKind::HighLatency,
        state: SymptomState::Open,
        severity: 1.8,
        peer: Some(node("n2")),
        evidence: BTreeMap::from([("p95_latency_ms".to_owned(), 180.0)]),
        summary: "p95 latency 180 ms over 100 ms".into(),
        caused_by: "t-1".into(),
    }
}

/// A decision to reroute n1 around n2, with one neighbour consulted.
pub fn decision() -> Decision {
    Decision {
        decision_id: "d-1".into(),
        symptom_id: "s-1".into(),
        incident_id: "i-1".into(),
        node: node("n1"),
        ts_ms: TS_MS,
        action: action(),
        rule: "latency-on-link".into(),
        reason: "rerouting worked on 3 similar incidents".into(),
        policy_name: "default".into(),
        policy_hash: "ab".repeat(32),
        knowledge: vec![Neighbour {
            incident_id: "i-0".into(),
            score: 0.93,
            action: ActionKind::Reroute,
            resolved: true,
        }],
        prev_hash: String::new(),
        signature: Vec::new(),
    }
}

fn action() -> Action {
    Action {
        kind: ActionKind::Reroute,
        peer: Some(node("n2")),
        service: None,
        params: BTreeMap::from([("ttl_s".to_owned(), "600".to_owned())]),
    }
}

/// The result of applying [`decision`].
pub fn action_result() -> ActionResult {
    ActionResult {
        result_id: "r-1".into(),
        decision_id: "d-1".into(),
        incident_id: "i-1".into(),
        node: node("n1"),
        ts_ms: TS_MS + 40,
        action: action(),
        status: ActionStatus::Applied,
        reason: String::new(),
        attempts: 1,
        dry_run: false,
        escalation: None,
        signature: Vec::new(),
    }
}

/// The result of [`decision`] refused by the blast radius and escalated to a human.
pub fn escalated_result() -> ActionResult {
    ActionResult {
        status: ActionStatus::Refused,
        reason: "blast radius: acting would put 3 of 20 known nodes under action, more than 2 \
                 (10%); under action: n2, n3"
            .into(),
        attempts: 0,
        escalation: Some([("team".to_owned(), "netops".to_owned())].into()),
        ..action_result()
    }
}

/// [`escalated_result`] as a signing executor writes it: with a signature's worth of bytes
/// (ML-DSA-65 signatures are 3309 bytes long). Not a valid signature: made without a key, it
/// shows the encoding, not the proof.
pub fn signed_escalated_result() -> ActionResult {
    ActionResult {
        signature: (0..3309u32).map(|i| (i % 251) as u8).collect(),
        ..escalated_result()
    }
}

/// The outcome of [`decision`]: resolved in 12 s.
pub fn outcome() -> Outcome {
    Outcome {
        outcome_id: "o-1".into(),
        decision_id: "d-1".into(),
        incident_id: "i-1".into(),
        node: node("n1"),
        ts_ms: TS_MS + 12_000,
        result: OutcomeResult::Resolved,
        recovery_ms: Some(12_000),
        detail: "latency back under threshold".into(),
    }
}

/// The decision `d-<incident>` to take `action` on `incident` at `ts_ms` (a restart names the
/// service `meshd`), for building past incidents.
pub fn decided(incident: &str, ts_ms: i64, action: ActionKind) -> Decision {
    Decision {
        decision_id: format!("d-{incident}"),
        incident_id: incident.to_owned(),
        ts_ms,
        action: Action {
            kind: action,
            peer: None,
            service: (action == ActionKind::RestartService).then(|| "meshd".to_owned()),
            params: BTreeMap::new(),
        },
        ..decision()
    }
}

/// The outcome of `decision`, judged at `ts_ms`: its incident resolved or not.
pub fn judged(decision: &Decision, ts_ms: i64, resolved: bool) -> Outcome {
    Outcome {
        decision_id: decision.decision_id.clone(),
        incident_id: decision.incident_id.clone(),
        ts_ms,
        result: if resolved {
            OutcomeResult::Resolved
        } else {
            OutcomeResult::NotResolved
        },
        ..outcome()
    }
}

/// A symptom opening the CPU incident `incident` on `node_id` at `ts_ms`: a mean CPU of
/// `cpu` over the 0.9 threshold, for building past incidents.
pub fn cpu_symptom(incident: &str, node_id: &str, ts_ms: i64, cpu: f64) -> Symptom {
    Symptom {
        symptom_id: format!("s-{incident}"),
        incident_id: incident.to_owned(),
        node: node(node_id),
        ts_ms,
        kind: SymptomKind::CpuSaturation,
        state: SymptomState::Open,
        severity: cpu / 0.9,
        peer: None,
        evidence: BTreeMap::from([
            ("mean_cpu".to_owned(), cpu),
            ("cpu_threshold".to_owned(), 0.9),
        ]),
        summary: format!("mean cpu {:.0}% over 90% threshold", cpu * 100.0),
        caused_by: "t-1".into(),
    }
}

/// What closed the incident `symptom` opened: the decision to take `action` when it opened
/// ([`decided`]), and its outcome judged at `judged_ms`, resolved or not ([`judged`]).
pub fn closing(
    symptom: &Symptom,
    action: ActionKind,
    judged_ms: i64,
    resolved: bool,
) -> (Decision, Outcome) {
    let decision = decided(&symptom.incident_id, symptom.ts_ms, action);
    let outcome = judged(&decision, judged_ms, resolved);
    (decision, outcome)
}

/// A dead letter for a body that was not Avro.
pub fn rejected() -> Rejected {
    Rejected::new(
        mapek_domain::Phase::Monitor,
        "mapek.monitor.3.n1",
        42,
        BTreeMap::from([("Nats-Msg-Id".to_owned(), "x".to_owned())]),
        b"not avro",
        "not an Avro single-object message".into(),
        TS_MS,
    )
}
