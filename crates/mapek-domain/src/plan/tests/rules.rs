//! Which rule matches, and what its first candidate becomes.

use super::*;
use crate::plan::NO_RULE;

#[test]
fn the_first_candidate_of_the_first_matching_rule_is_chosen() {
    let d = given(POLICY, [])
        .when(open_link("n1", "n2", SymptomKind::PacketLoss, 0, 2.0))
        .then_chooses(ActionKind::Reroute);
    assert_eq!(d.rule, "lossy-link");
    assert_eq!(
        d.action.peer,
        Some(id("n2")),
        "reroute goes around the blamed peer"
    );
    assert_eq!(
        d.reason,
        "rule `lossy-link` matched packet_loss at severity 2.00 with peer n2; no similar \
         incidents: policy order; chose reroute"
    );
}

#[test]
fn a_candidate_carries_its_service_rate_and_params() {
    let restart = given(POLICY, [])
        .when(open("n1", SymptomKind::HighLatency, 0, 1.5))
        .then_chooses(ActionKind::RestartService);
    assert_eq!(restart.rule, "slow");
    assert_eq!(restart.action.service.as_deref(), Some("meshd"));
    assert_eq!(restart.action.peer, None, "only reroute names a peer");

    let limit = given(POLICY, [])
        .when(open("n1", SymptomKind::CpuSaturation, 0, 1.5))
        .then_chooses(ActionKind::RateLimit);
    assert_eq!(limit.action.params["rate_pps"], "500");
    assert_eq!(limit.action.service, None);
}

#[test]
fn a_stricter_rule_written_first_takes_the_severe_cases() {
    given(POLICY, [])
        .when(open("n1", SymptomKind::HighLatency, 0, 3.0))
        .then_expect(|d| assert_eq!(d.unwrap().rule, "slow-severe", "at the minimum matches"))
        .when(open("n2", SymptomKind::HighLatency, 0, 2.99))
        .then_expect(|d| assert_eq!(d.unwrap().rule, "slow"));
}

#[test]
fn no_matching_rule_escalates_with_the_policy_fallback() {
    // lossy-link wants a peer; this loss is node-wide, and no other rule takes packet_loss.
    let d = given(POLICY, [])
        .when(open("n1", SymptomKind::PacketLoss, 0, 2.0))
        .then_chooses(ActionKind::Escalate);
    assert_eq!(d.rule, NO_RULE);
    assert_eq!(d.action.params["team"], "netops");
    assert_eq!(
        d.knowledge,
        vec![],
        "no candidates to rank: knowledge not consulted"
    );
    assert_eq!(
        d.reason,
        "no rule matches packet_loss at severity 2.00 without peer; escalating"
    );
}

#[test]
fn a_rule_with_has_peer_matches_only_link_scoped_symptoms() {
    given(POLICY, [])
        .when(open_link("n1", "n2", SymptomKind::PacketLoss, 0, 1.0))
        .then_expect(|d| assert_eq!(d.unwrap().rule, "lossy-link"))
        .when(open("n3", SymptomKind::PacketLoss, 0, 1.0))
        .then_expect(|d| assert_eq!(d.unwrap().rule, NO_RULE));
}
