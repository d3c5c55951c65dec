//! Open, update, resolve: which symptoms of an incident are decided.

use super::*;

fn slow(secs: i64, severity: f64) -> Symptom {
    open("n1", SymptomKind::HighLatency, secs, severity)
}

#[test]
fn a_resolve_decides_nothing_and_closes_the_incident() {
    let s = slow(0, 1.5);
    let scenario = given(POLICY, [s.clone()]);
    assert!(scenario.planner.state().incident(&s.incident_id).is_some());
    let scenario = scenario.when(resolve(&s, 60)).then_nothing();
    assert_eq!(scenario.planner.state().incident(&s.incident_id), None);
}

#[test]
fn an_update_that_stays_under_the_same_rule_decides_nothing() {
    let s = slow(0, 1.5);
    given(POLICY, [s.clone()])
        .when(update(&s, 30, 2.5))
        .then_nothing()
        .when(update(&s, 40, 1.1))
        .then_nothing();
}

#[test]
fn an_update_past_a_stricter_rules_minimum_decides_again() {
    let s = slow(0, 1.5);
    let d = given(POLICY, [s.clone()])
        .when(update(&s, 30, 3.2))
        .then_chooses(ActionKind::Quarantine);
    assert_eq!(d.rule, "slow-severe");
    assert!(
        d.reason.starts_with(
            "high_latency at severity 3.20 without peer escalated past min_severity 3.00 of \
             rule `slow-severe` (was rule `slow`)"
        ),
        "{}",
        d.reason
    );
}

#[test]
fn once_escalated_further_updates_decide_nothing() {
    let s = slow(0, 1.5);
    given(POLICY, [s.clone(), update(&s, 30, 3.2)])
        .when(update(&s, 40, 5.0))
        .then_nothing()
        .when(update(&s, 50, 1.2))
        .then_nothing();
}

#[test]
fn an_update_that_now_matches_a_rule_after_none_matched_decides() {
    let policy = POLICY.replace(
        "[[rules]]\nname = \"slow\"\n",
        "[[rules]]\nname = \"slow\"\nmin_severity = 2.0\n",
    );
    let s = slow(0, 1.5);
    let d = given(&policy, [s.clone()])
        .when(update(&s, 30, 2.5))
        .then_chooses(ActionKind::RestartService);
    let opening = "high_latency at severity 2.50 without peer now matches rule `slow` (no rule \
                   matched before)";
    assert!(d.reason.starts_with(opening), "{}", d.reason);
}

#[test]
fn an_update_that_names_a_peer_no_rule_wanted_before_decides() {
    let s = open("n1", SymptomKind::PacketLoss, 0, 2.0);
    let blamed = Symptom {
        peer: Some(id("n2")),
        ..update(&s, 30, 2.0)
    };
    let d = given(POLICY, [s])
        .when(blamed)
        .then_chooses(ActionKind::Reroute);
    assert_eq!(d.rule, "lossy-link");
}

#[test]
fn a_state_from_another_policy_decides_no_update_twice() {
    let s = slow(0, 1.5);
    let mut scenario = given(POLICY, [s.clone()]);
    let mut foreign = scenario.decisions[0].clone();
    foreign.rule = "a-rule-this-policy-lacks".to_owned();
    scenario.planner = Planner::new(Policy::parse(POLICY).unwrap());
    scenario.planner.observe(&s);
    scenario.planner.apply(&foreign);
    scenario.when(update(&s, 30, 9.0)).then_nothing();
}

#[test]
fn an_update_of_an_incident_never_seen_open_decides_nothing() {
    let s = slow(0, 1.5);
    given(POLICY, []).when(update(&s, 30, 4.0)).then_nothing();
}

#[test]
fn a_repeated_open_decides_nothing() {
    let s = slow(0, 1.5);
    given(POLICY, [s.clone()]).when(s).then_nothing();
}
