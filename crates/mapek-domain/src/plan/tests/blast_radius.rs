//! The blast radius: how much of the mesh may be under action at once.

use super::*;

/// An incident of loss on the link from `node` to `peer`, opened at `secs`.
fn loss(node: &str, peer: &str, secs: i64) -> Symptom {
    open_link(node, peer, SymptomKind::PacketLoss, secs, 2.0)
}

/// n1 and n2 under action: with 3 nodes seen, counted as `min_known_nodes` = 4, at 50 %,
/// that is the most allowed.
fn two_under_action() -> [Symptom; 2] {
    [loss("n1", "n2", 0), loss("n2", "n1", 10)]
}

#[test]
fn a_node_past_the_limit_gets_an_escalation_instead_of_an_action() {
    let d = given(POLICY, two_under_action())
        .when(loss("n3", "n1", 20))
        .then_chooses(ActionKind::Escalate);
    let refused = "blast radius, acting would put 3 of 4 known nodes under action, more than \
                   2 (50%)";
    for skipped in ["reroute", "rate_limit", "quarantine"] {
        let why = format!("skipped {skipped}: {refused}");
        assert!(d.reason.contains(&why), "{}", d.reason);
    }
    assert!(
        d.reason.ends_with("every candidate skipped: escalating"),
        "{}",
        d.reason
    );
}

#[test]
fn with_scope_mesh_the_planner_leaves_the_blast_radius_to_the_executor() {
    let mesh = POLICY.replace("[blast_radius]\n", "[blast_radius]\nscope = \"mesh\"\n");
    let d = given(&mesh, two_under_action())
        .when(loss("n3", "n1", 20))
        .then_chooses(ActionKind::Reroute);
    assert!(!d.reason.contains("blast radius"), "{}", d.reason);
    // The policy file says where, and nothing else changes: a policy without it judges
    // per partition, as every policy did before it could say.
    let file = Policy::parse(&mesh).unwrap().file().blast_radius.clone();
    assert_eq!(file.scope, Scope::Mesh);
    let file = Policy::parse(POLICY).unwrap().file().blast_radius.clone();
    assert_eq!(file.scope, Scope::Partition);
    let err =
        Policy::parse(&POLICY.replace("[blast_radius]\n", "[blast_radius]\nscope = \"all\"\n"))
            .unwrap_err()
            .to_string();
    assert!(err.contains("scope") && err.contains("mesh"), "{err}");
}

#[test]
fn a_node_already_under_action_does_not_widen_the_radius() {
    given(POLICY, two_under_action())
        .when(open("n1", SymptomKind::HighLatency, 20, 1.5))
        .then_chooses(ActionKind::RestartService);
}

#[test]
fn a_resolved_incident_frees_its_node() {
    let [first, second] = two_under_action();
    let history = [first.clone(), second, resolve(&first, 15)];
    given(POLICY, history)
        .when(loss("n3", "n1", 20))
        .then_chooses(ActionKind::Reroute);
}

#[test]
fn actions_leave_the_window_by_event_time() {
    // The window is 600 s: at 599 s both actions still count, at 600 s n1's (at 0 s) has
    // left.
    given(POLICY, two_under_action())
        .when(loss("n3", "n1", 599))
        .then_expect(|d| assert_eq!(d.unwrap().action.kind, ActionKind::Escalate));
    given(POLICY, two_under_action())
        .when(loss("n3", "n1", 600))
        .then_chooses(ActionKind::Reroute);
}

#[test]
fn more_known_nodes_allow_more_under_action() {
    // Six nodes seen (n1..n6; n6's memory has no rule, so it was only escalated) at 50 %:
    // three may be under action.
    let history = [
        loss("n1", "n4", 0),
        loss("n2", "n5", 10),
        open("n6", SymptomKind::MemorySaturation, 15, 2.0),
    ];
    given(POLICY, history)
        .when(loss("n3", "n1", 20))
        .then_chooses(ActionKind::Reroute);
}

#[test]
fn an_escalation_is_never_refused() {
    let d = given(POLICY, two_under_action())
        .when(open("n3", SymptomKind::CpuSaturation, 20, 1.5))
        .then_chooses(ActionKind::Escalate);
    assert_eq!(d.rule, "pinned");
    assert!(
        d.reason.contains("skipped rate_limit: blast radius"),
        "{}",
        d.reason
    );
    assert!(
        d.reason.ends_with("chose escalate"),
        "chosen as a candidate, not the fallback"
    );
}

#[test]
fn actions_per_window_are_limited_even_when_resolved() {
    let policy = POLICY
        .replace("max_node_percent = 50.0\n", "")
        .replace("max_actions = 10", "max_actions = 2");
    let [first, second] = two_under_action();
    let history = [
        first.clone(),
        second.clone(),
        resolve(&first, 11),
        resolve(&second, 12),
    ];
    let d = given(&policy, history)
        .when(loss("n3", "n1", 20))
        .then_chooses(ActionKind::Escalate);
    let why = "skipped reroute: blast radius, 2 actions decided in the last 600 s, the most \
               allowed";
    assert!(d.reason.contains(why), "{}", d.reason);
    given(&policy, [first, second])
        .when(loss("n3", "n1", 600))
        .then_chooses(ActionKind::Reroute);
}
