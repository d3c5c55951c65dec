//! Cooldowns: an action just decided for a node is not decided again for it too soon.

use super::*;

/// Another incident of `kind` on the link from `node` to `peer`, opened at `secs`.
fn loss(node: &str, peer: &str, secs: i64) -> Symptom {
    open_link(node, peer, SymptomKind::PacketLoss, secs, 2.0)
}

#[test]
fn a_candidate_in_cooldown_is_skipped_for_the_next() {
    let d = given(POLICY, [loss("n1", "n2", 0)])
        .when(loss("n1", "n3", 100))
        .then_chooses(ActionKind::RateLimit);
    assert_eq!(
        d.reason,
        format!(
            "rule `lossy-link` matched packet_loss at severity 2.00 with peer n3; no similar \
             incidents: policy order; skipped reroute: in cooldown on n1 (reroute decided at \
             ts {}, cooldown 300 s, 200 s left); chose rate_limit",
            at(0)
        )
    );
}

#[test]
fn a_cooldown_ends_by_event_time() {
    given(POLICY, [loss("n1", "n2", 0)])
        .when(loss("n1", "n3", 299))
        .then_expect(|d| assert_eq!(d.unwrap().action.kind, ActionKind::RateLimit));
    // 300 s of event time later, whatever the wall clock says.
    given(POLICY, [loss("n1", "n2", 0)])
        .when(loss("n1", "n3", 300))
        .then_chooses(ActionKind::Reroute);
}

#[test]
fn a_cooldown_is_per_node() {
    given(POLICY, [loss("n1", "n2", 0)])
        .when(loss("n2", "n1", 10))
        .then_chooses(ActionKind::Reroute);
}

#[test]
fn a_cooldown_counts_the_action_whichever_rule_decided_it() {
    let slow = |secs| open("n1", SymptomKind::HighLatency, secs, 1.5);
    // `slow` restarts at 0, then rate-limits at 10 since the restart is cooling down.
    let history = [slow(0), slow(10)];
    let d = given(POLICY, history)
        .when(open("n1", SymptomKind::CpuSaturation, 20, 1.5))
        .then_chooses(ActionKind::Escalate);
    assert_eq!(d.rule, "pinned");
    assert!(
        d.reason.contains("skipped rate_limit: in cooldown on n1"),
        "{}",
        d.reason
    );
    assert!(d.reason.ends_with("chose escalate"), "{}", d.reason);
}

#[test]
fn every_candidate_in_cooldown_escalates_and_says_why() {
    let history = [
        loss("n1", "n2", 0),
        loss("n1", "n2", 10),
        loss("n1", "n2", 20),
    ];
    let s = given(POLICY, history);
    let kinds: Vec<_> = s.decisions.iter().map(|d| d.action.kind).collect();
    assert_eq!(
        kinds,
        [
            ActionKind::Reroute,
            ActionKind::RateLimit,
            ActionKind::Quarantine
        ]
    );
    let d = s
        .when(loss("n1", "n2", 30))
        .then_chooses(ActionKind::Escalate);
    assert_eq!(d.rule, "lossy-link");
    assert_eq!(d.action.params["team"], "netops", "the policy's fallback");
    for skipped in ["reroute", "rate_limit", "quarantine"] {
        let why = format!("skipped {skipped}: in cooldown on n1");
        assert!(d.reason.contains(&why), "{}", d.reason);
    }
    assert!(
        d.reason.ends_with("every candidate skipped: escalating"),
        "{}",
        d.reason
    );
}

#[test]
fn a_rule_may_escalate_with_its_own_fallback() {
    let severe = |secs| open("n1", SymptomKind::HighLatency, secs, 4.0);
    let d = given(POLICY, [severe(0)])
        .when(severe(60))
        .then_chooses(ActionKind::Escalate);
    assert_eq!(d.rule, "slow-severe");
    assert_eq!(d.action.params["team"], "sre");
    assert_eq!(d.action.params["urgency"], "page");
}
