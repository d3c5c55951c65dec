//! Knowledge: similar past incidents reorder a rule's candidates, and are recorded.

use super::*;

fn lossy() -> Symptom {
    open_link("n1", "n2", SymptomKind::PacketLoss, 0, 2.0)
}

#[test]
fn what_resolved_similar_incidents_goes_before_what_failed() {
    let knowledge = vec![
        past("old-1", 0.9, ActionKind::Reroute, false),
        past("old-2", 0.8, ActionKind::RateLimit, true),
    ];
    let d = given(POLICY, [])
        .knowing(knowledge.clone())
        .when(lossy())
        .then_chooses(ActionKind::RateLimit);
    assert_eq!(
        d.knowledge, knowledge,
        "exactly the neighbours consulted, nearest first"
    );
    assert_eq!(
        d.reason,
        "rule `lossy-link` matched packet_loss at severity 2.00 with peer n2; ranked by 2 \
         similar incidents: rate_limit +0.80, reroute -0.90; chose rate_limit"
    );
}

#[test]
fn evidence_is_summed_per_action_weighted_by_similarity() {
    // Reroute: 0.9 + 0.3 - 0.5 = +0.7; rate_limit: +0.6. Reroute stays first.
    let d = given(POLICY, [])
        .knowing(vec![
            past("a", 0.9, ActionKind::Reroute, true),
            past("b", 0.3, ActionKind::Reroute, true),
            past("c", 0.5, ActionKind::Reroute, false),
            past("d", 0.6, ActionKind::RateLimit, true),
        ])
        .when(lossy())
        .then_chooses(ActionKind::Reroute);
    assert!(
        d.reason.contains("reroute +0.70, rate_limit +0.60"),
        "{}",
        d.reason
    );
}

#[test]
fn a_failure_alone_moves_an_action_below_those_without_evidence() {
    given(POLICY, [])
        .knowing(vec![past("a", 0.5, ActionKind::Reroute, false)])
        .when(lossy())
        .then_chooses(ActionKind::RateLimit);
}

#[test]
fn without_evidence_on_the_candidates_the_policy_order_stands() {
    let d = given(POLICY, [])
        .knowing(vec![past("a", 0.9, ActionKind::Escalate, true)])
        .when(lossy())
        .then_chooses(ActionKind::Reroute);
    assert_eq!(
        d.knowledge.len(),
        1,
        "consulted, so recorded, though it did not count"
    );
    assert!(
        d.reason
            .contains("1 similar incidents, none with a candidate action: policy order"),
        "{}",
        d.reason
    );
}

#[test]
fn the_recorded_knowledge_is_filtered_and_sorted_whatever_the_store_answered() {
    let s = lossy();
    // The store answers at most `neighbours`; six here, so that three can be dropped.
    let policy = POLICY.replace("neighbours = 5", "neighbours = 6");
    let d = given(&policy, [])
        .knowing(vec![
            past("b", 0.5, ActionKind::RateLimit, true),
            past("far", 0.05, ActionKind::Quarantine, true),
            past("nan", f64::NAN, ActionKind::Quarantine, true),
            past(&s.incident_id, 0.99, ActionKind::Quarantine, true),
            past("a", 0.5, ActionKind::RateLimit, true),
            past("c", 0.7, ActionKind::Reroute, false),
        ])
        .when(s)
        .then_chooses(ActionKind::RateLimit);
    let kept: Vec<_> = d.knowledge.iter().map(|n| n.incident_id.as_str()).collect();
    assert_eq!(kept, ["c", "a", "b"], "score first, then incident id");
}

#[test]
fn knowledge_promotes_but_cooldown_still_skips() {
    let earlier = open_link("n1", "n3", SymptomKind::PacketLoss, 0, 2.0);
    // rate_limit was decided at 0 (reroute's cooldown from an earlier decision forced it).
    let history = [
        open_link("n1", "n4", SymptomKind::PacketLoss, -10, 2.0),
        earlier,
    ];
    let s = given(POLICY, history);
    assert_eq!(s.decisions[1].action.kind, ActionKind::RateLimit);
    let d = s
        .knowing(vec![past("a", 0.9, ActionKind::RateLimit, true)])
        .when(open_link("n1", "n2", SymptomKind::PacketLoss, 400, 2.0))
        .then_chooses(ActionKind::Reroute);
    assert!(
        d.reason.contains("skipped rate_limit: in cooldown"),
        "{}",
        d.reason
    );
}

#[test]
fn a_pinned_rule_ignores_knowledge_and_records_none() {
    let d = given(POLICY, [])
        .knowing(vec![past("a", 0.9, ActionKind::RateLimit, false)])
        .when(open("n1", SymptomKind::CpuSaturation, 0, 2.0))
        .then_chooses(ActionKind::RateLimit);
    assert_eq!(d.knowledge, vec![]);
    assert!(
        d.reason
            .contains("policy order (the rule does not rank by knowledge)")
    );
}

#[test]
fn zero_neighbours_turns_knowledge_off() {
    let policy = POLICY.replace("neighbours = 5", "neighbours = 0");
    let d = given(&policy, [])
        .knowing(vec![past("a", 0.9, ActionKind::Reroute, false)])
        .when(lossy())
        .then_chooses(ActionKind::Reroute);
    assert_eq!(d.knowledge, vec![]);
}
