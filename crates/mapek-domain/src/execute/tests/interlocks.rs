//! Every interlock, its order, and what folding results does to them.

use super::*;
use crate::execute::{Approval, RateLimit};
use ActionKind::{Escalate, Quarantine, RateLimit as Limit, Reroute, RestartService};

/// A config that isolates one interlock: a big mesh, and the others out of the way.
fn roomy() -> ExecuteConfig {
    ExecuteConfig {
        rate_limit: RateLimit {
            max_actions: 1000,
            window_ms: 60_000,
        },
        ..ExecuteConfig::default()
    }
}

#[test]
fn a_decision_with_nothing_in_its_way_is_sent() {
    given(ExecuteConfig::default(), vec![])
        .when(&decision("a", "n7", RestartService, 0.0))
        .then_send();
}

#[test]
fn an_escalation_touches_no_node_and_passes_every_interlock() {
    let config = ExecuteConfig {
        require_approval: Approval::All(true),
        ..ExecuteConfig::default()
    };
    // n7 is in its cooldown, and n7 and n8 use up the blast radius of a small mesh.
    given(config, vec![done("a", "n7", Reroute, 0.0)])
        .when(&decision("b", "n7", Escalate, 1.0))
        .then_record(|r| {
            assert_eq!(r.status, ActionStatus::Applied);
            assert_eq!((r.attempts, r.dry_run, r.reason.as_str()), (0, false, ""));
            assert_eq!(r.ts_ms, T0 + 1000);
        });
    // Nor does an applied escalation start a cooldown.
    given(
        ExecuteConfig::default(),
        vec![done("a", "n7", Escalate, 0.0)],
    )
    .when(&decision("b", "n7", Reroute, 1.0))
    .then_send();
}

#[test]
fn lease_a_node_with_a_command_out_takes_no_other() {
    let mut s = given(roomy(), vec![]);
    let first = decision("a", "n7", Reroute, 0.0);
    s.interlocks.begin(&first);
    let s = s
        .when(&decision("b", "n7", RestartService, 0.5))
        .then_refused(
            Interlock::Lease,
            "lease: n7 has reroute in flight (decision d-a)",
        )
        // Another node is free, and the holder itself is not refused by its own lease.
        .when(&decision("c", "n8", RestartService, 0.5))
        .then_send()
        .when(&first)
        .then_send();
    // The result releases the lease; the node is then in its cooldown instead.
    s.and_then(&failed_at("a", "n7", Reroute, 0.0))
        .when(&decision("b", "n7", RestartService, 0.5))
        .then_send();
}

#[test]
fn cooldown_a_node_acted_on_recently_is_refused_until_it_passes() {
    given(roomy(), vec![done("a", "n7", RestartService, 0.0)])
        .when(&decision("b", "n7", Reroute, 12.0))
        .then_refused(
            Interlock::Cooldown,
            "cooldown: n7 had restart_service applied 12.0 s ago, cooldown is 60 s",
        )
        .when(&decision("c", "n8", Reroute, 12.0))
        .then_send()
        .when(&decision("d", "n7", Reroute, 60.0))
        .then_send();
}

#[test]
fn cooldown_counts_only_applied_actions() {
    let refused = crate::execute::result(
        &decision("r", "n7", Reroute, 1.0),
        ActionStatus::Refused,
        "cooldown: a test",
        0,
        false,
    );
    given(roomy(), vec![failed_at("a", "n7", Reroute, 0.0), refused])
        .when(&decision("b", "n7", Reroute, 2.0))
        .then_send();
}

#[test]
fn rate_limit_caps_actions_per_window_over_all_nodes() {
    let config = ExecuteConfig {
        rate_limit: RateLimit {
            max_actions: 3,
            window_ms: 10_000,
        },
        ..roomy()
    };
    let history = vec![
        done("a", "n1", Reroute, 0.0),
        done("b", "n2", Reroute, 1.0),
        done("c", "n3", Reroute, 2.0),
    ];
    given(config, history)
        .when(&decision("d", "n4", Reroute, 5.0))
        .then_refused(
            Interlock::RateLimit,
            "rate limit: 3 actions applied in the last 10 s, the limit is 3 per 10 s",
        )
        // At 10 s the first action has left the window.
        .when(&decision("e", "n4", Reroute, 10.0))
        .then_send();
}

#[test]
fn blast_radius_caps_the_share_of_nodes_under_action() {
    let config = ExecuteConfig {
        cooldown_ms: 0,
        ..ExecuteConfig::default()
    };
    let history = vec![done("a", "n1", Reroute, 0.0), done("b", "n2", Reroute, 1.0)];
    given_under(config, radius(10.0, 20), history)
        .when(&decision("c", "n3", Reroute, 5.0))
        .then_refused(
            Interlock::BlastRadius,
            "blast radius: acting would put 3 of 20 known nodes under action, more than 2 \
             (10%); under action: n1, n2",
        )
        // A node already under action does not widen it.
        .when(&decision("d", "n1", RestartService, 5.0))
        .then_send()
        // Once the policy's window since n1's action passed, n3 fits.
        .when(&decision("e", "n3", Reroute, 60.0))
        .then_send();
}

#[test]
fn a_node_whose_action_was_judged_is_no_longer_under_action() {
    let judged = |name: &str, node: &str, secs: f64| crate::Outcome {
        outcome_id: format!("o-{name}"),
        decision_id: format!("d-{name}"),
        incident_id: format!("i-{node}"),
        node: id(node),
        ts_ms: T0 + (secs * 1000.0) as i64,
        result: crate::OutcomeResult::Resolved,
        recovery_ms: Some(1000),
        detail: "resolved".into(),
    };
    let history = vec![done("a", "n1", Reroute, 0.0), done("b", "n2", Reroute, 1.0)];
    let mut s = given_under(ExecuteConfig::default(), radius(10.0, 20), history)
        .when(&decision("c", "n3", Reroute, 5.0))
        .then_refused(
            Interlock::BlastRadius,
            "blast radius: acting would put 3 of 20 known nodes under action, more than 2 \
             (10%); under action: n1, n2",
        );
    // n1's incident resolved: its action is over, and n3 fits.
    s.interlocks.apply_outcome(&judged("a", "n1", 3.0));
    let mut s = s.when(&decision("c", "n3", Reroute, 5.0)).then_send();
    // An outcome folded before its result counts once the result is.
    s.interlocks.apply_outcome(&judged("d", "n4", 6.0));
    s.and_then(&done("d", "n4", Reroute, 4.0))
        .when(&decision("e", "n5", Reroute, 7.0))
        .then_send();
}

#[test]
fn the_mesh_is_the_nodes_reporting_but_never_fewer_than_the_policys_floor() {
    let history = vec![done("a", "n1", Reroute, 0.0)];
    let mut s = given_under(ExecuteConfig::default(), radius(10.0, 10), history)
        .when(&decision("b", "n2", Reroute, 1.0))
        .then_refused(
            Interlock::BlastRadius,
            "blast radius: acting would put 2 of 10 known nodes under action, more than 1 \
             (10%); under action: n1",
        );
    // 30 nodes report telemetry: 3 may be under action.
    s.interlocks.mesh_reports(30);
    let mut s = s.when(&decision("b", "n2", Reroute, 1.0)).then_send();
    // Fewer than the floor reporting: the floor counts.
    s.interlocks.mesh_reports(5);
    s.when(&decision("b", "n2", Reroute, 1.0)).then_refused(
        Interlock::BlastRadius,
        "blast radius: acting would put 2 of 10 known nodes under action, more than 1 \
             (10%); under action: n1",
    );
}

#[test]
fn max_actions_counts_every_action_applied_or_out_in_the_window() {
    let limit = BlastRadius {
        max_node_percent: None,
        max_actions: Some(2),
        ..radius(100.0, 1000)
    };
    let mut s = given_under(roomy(), limit, vec![done("a", "n1", Reroute, 0.0)]);
    s.interlocks
        .out_elsewhere([out("n2", "b", Reroute, "exec-b")]);
    s.when(&decision("c", "n3", Reroute, 1.0))
        .then_refused(
            Interlock::BlastRadius,
            "blast radius: 2 actions decided in the last 60 s, the most allowed; under action: \
             n1, n2",
        )
        // An escalation touches no node.
        .when(&decision("d", "n3", Escalate, 1.0))
        .then_record(|r| assert_eq!(r.status, ActionStatus::Applied));
}

#[test]
fn a_partition_scoped_policy_was_judged_by_its_planner() {
    let planner_judged = BlastRadius {
        scope: Scope::Partition,
        ..radius(10.0, 10)
    };
    let history = vec![done("a", "n1", Reroute, 0.0)];
    given_under(roomy(), planner_judged, history)
        .when(&decision("b", "n2", Reroute, 1.0))
        .then_send();
}

#[test]
fn a_decision_of_a_policy_not_recorded_is_refused() {
    let mut d = decision("a", "n1", Reroute, 0.0);
    d.policy_hash = "cd".repeat(32);
    given(roomy(), vec![]).when(&d).then_refused(
        Interlock::BlastRadius,
        "blast radius: the policy that made the decision (test, sha256 cdcdcdcdcdcd) is not \
             recorded in MAPEK_CONFIG, so how much of the mesh it may act on is unknown",
    );
    // An escalation needs no policy's blast radius.
    d.action.kind = Escalate;
    given(roomy(), vec![]).when(&d).then_record(|r| {
        assert_eq!(r.status, ActionStatus::Applied);
    });
}

#[test]
fn dry_run_records_what_would_be_done_and_sends_nothing() {
    let config = ExecuteConfig {
        dry_run: true,
        require_approval: Approval::All(true),
        ..roomy()
    };
    let d = decision("a", "n7", Quarantine, 0.0);
    let mut recorded = None;
    given(config, vec![])
        .when(&d)
        .then_record(|r| {
            assert_eq!(r.status, ActionStatus::Applied);
            assert!(r.dry_run);
            assert_eq!(r.attempts, 0);
            recorded = Some(r.clone());
        })
        // The dry run is folded like a live action: the next one meets the cooldown.
        .and_then(&recorded.clone().unwrap())
        .when(&decision("b", "n7", Reroute, 1.0))
        .then_refused(
            Interlock::Cooldown,
            "cooldown: n7 had quarantine applied 1.0 s ago, cooldown is 60 s",
        );
}

#[test]
fn approval_holds_the_action_until_a_human_gives_it() {
    let all = ExecuteConfig {
        require_approval: Approval::All(true),
        ..roomy()
    };
    let d = decision("a", "n7", Quarantine, 0.0);
    given(all, vec![])
        .when(&d)
        .then_wait()
        .when_approved(&d)
        .then_send();
    let some = ExecuteConfig {
        require_approval: Approval::Kinds([Quarantine, Limit].into()),
        ..roomy()
    };
    given(some, vec![])
        .when(&d)
        .then_wait()
        .when(&decision("b", "n8", Reroute, 0.0))
        .then_send();
}

#[test]
fn the_first_failing_interlock_in_order_is_the_reason() {
    // n7 is leased, in its cooldown, over the rate limit and the blast radius, in a dry run
    // that needs approval: the lease is named. Take them away one at a time.
    let config = ExecuteConfig {
        dry_run: true,
        require_approval: Approval::All(true),
        rate_limit: RateLimit {
            max_actions: 1,
            window_ms: 60_000,
        },
        ..ExecuteConfig::default()
    };
    let history = vec![done("a", "n1", Reroute, 0.0), done("b", "n7", Reroute, 0.0)];
    let given = |config, history| given_under(config, radius(10.0, 10), history);
    let mut s = given(config.clone(), history.clone());
    s.interlocks.begin(&decision("c", "n7", Reroute, 0.0));
    let d = decision("d", "n7", Reroute, 1.0);
    let order = |s: Scenario| match s.when(&d).verdict.unwrap() {
        Verdict::Record(r) => r.reason.split(':').next().unwrap().to_owned(),
        Verdict::AwaitApproval(r) => r.interlock.as_str().to_owned(),
        Verdict::Send => "sent".to_owned(),
    };
    assert_eq!(order(s), "lease");
    assert_eq!(order(given(config.clone(), history.clone())), "cooldown");
    let other = decision("d", "n9", Reroute, 1.0);
    let s = given(config.clone(), history.clone()).when(&other);
    assert!(s.refused().reason.starts_with("rate limit"));
    let roomier = ExecuteConfig {
        rate_limit: RateLimit::default(),
        ..config.clone()
    };
    let s = given(roomier.clone(), history.clone()).when(&other);
    assert!(s.refused().reason.starts_with("blast radius"));
    let wide = |config, history| given_under(config, radius(100.0, 10), history);
    wide(roomier.clone(), history.clone())
        .when(&other)
        .then_record(|r| assert!(r.dry_run && r.status == ActionStatus::Applied));
    let live = ExecuteConfig {
        dry_run: false,
        ..roomier
    };
    wide(live, history).when(&other).then_wait();
}

#[test]
fn a_decision_acted_on_is_remembered_and_a_second_fold_changes_nothing() {
    let r = done("a", "n7", Reroute, 0.0);
    let once = given(roomy(), vec![r.clone()]);
    let twice = given(roomy(), vec![r.clone(), r.clone()]);
    assert!(once.interlocks.has_result("d-a"));
    assert!(!once.interlocks.has_result("d-b"));
    assert_eq!(once.interlocks, twice.interlocks);
}

#[test]
fn ids_are_deterministic_from_the_decision() {
    let d = decision("a", "n7", Reroute, 0.0);
    let a = applied(&d, 1);
    let b = failed(&d, "x", 3);
    assert_eq!(a.result_id, b.result_id);
    assert_ne!(
        a.result_id,
        applied(&decision("b", "n7", Reroute, 0.0), 1).result_id
    );
    assert_eq!((b.attempts, b.reason.as_str()), (3, "x"));
}

impl Scenario {
    /// The refused result of the latest decision.
    fn refused(self) -> ActionResult {
        match self.verdict.expect("call when() first") {
            Verdict::Record(r) if r.status == ActionStatus::Refused => *r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

fn out(node: &str, name: &str, kind: ActionKind, executor: &str) -> CommandOut {
    CommandOut {
        node: id(node),
        decision_id: format!("d-{name}"),
        kind,
        executor: executor.into(),
    }
}

#[test]
fn commands_out_at_other_executors_hold_their_nodes_until_their_results_are_folded() {
    let mut s = given(roomy(), vec![]);
    s.interlocks
        .out_elsewhere([out("n7", "a", Reroute, "exec-b")]);
    assert_eq!(s.interlocks.out_elsewhere_for("d-a"), Some("exec-b"));
    let s = s
        .when(&decision("b", "n7", RestartService, 0.5))
        .then_refused(
            Interlock::Lease,
            "lease: n7 has reroute in flight at executor exec-b (decision d-a)",
        )
        .when(&decision("c", "n8", RestartService, 0.5))
        .then_send();
    // exec-b's result arrives: its lease is over even if the list is not yet updated, and
    // n7 is in its cooldown.
    let mut s = s.and_then(&done("a", "n7", Reroute, 0.0));
    s.interlocks
        .out_elsewhere([out("n7", "a", Reroute, "exec-b")]);
    assert_eq!(s.interlocks.out_elsewhere_for("d-a"), None);
    s.when(&decision("b", "n7", RestartService, 0.5))
        .then_refused(
            Interlock::Cooldown,
            "cooldown: n7 had reroute applied 0.5 s ago, cooldown is 60 s",
        );
}

#[test]
fn commands_out_elsewhere_count_toward_the_rate_limit_and_the_blast_radius() {
    let config = ExecuteConfig {
        rate_limit: RateLimit {
            max_actions: 3,
            window_ms: 10_000,
        },
        ..roomy()
    };
    let mut s = given(config, vec![done("a", "n1", Reroute, 0.0)]);
    s.interlocks.out_elsewhere([
        out("n2", "b", Reroute, "exec-b"),
        out("n3", "c", Reroute, "exec-c"),
    ]);
    let mut s = s.when(&decision("d", "n4", Reroute, 1.0)).then_refused(
        Interlock::RateLimit,
        "rate limit: 1 actions applied in the last 10 s and 2 commands out, the limit is \
             3 per 10 s",
    );
    // The list is replaced, not added to: exec-c's command is over.
    s.interlocks
        .out_elsewhere([out("n2", "b", Reroute, "exec-b")]);
    s.when(&decision("d", "n4", Reroute, 1.0)).then_send();

    let history = vec![done("a", "n1", Reroute, 0.0)];
    let mut s = given_under(roomy(), radius(10.0, 20), history);
    s.interlocks
        .out_elsewhere([out("n2", "b", Reroute, "exec-b")]);
    s.when(&decision("c", "n3", Reroute, 1.0)).then_refused(
        Interlock::BlastRadius,
        "blast radius: acting would put 3 of 20 known nodes under action, more than 2 (10%); \
         under action: n1, n2",
    );
}

#[test]
fn a_refused_action_is_escalated_as_its_policy_says() {
    let netops = BTreeMap::from([("team".to_owned(), "netops".to_owned())]);
    let history = vec![done("a", "n1", Reroute, 0.0)];
    let refused = decision("b", "n2", Reroute, 1.0);
    given_under(roomy(), radius(10.0, 10), history.clone())
        .when(&refused)
        .then_record(|r| {
            assert_eq!(r.status, ActionStatus::Refused);
            assert_eq!(r.escalation.as_ref(), Some(&netops), "{r:#?}");
        });
    // A policy that records refusals only.
    let quiet = policy(&radius(10.0, 10), false);
    given_policy(roomy(), quiet, history.clone())
        .when(&refused)
        .then_record(|r| {
            assert_eq!(r.status, ActionStatus::Refused);
            assert_eq!(r.escalation, None);
        });
    // An unknown policy: refused, and a human is told all the same.
    let unknown = Decision {
        policy_hash: "cd".repeat(32),
        ..refused.clone()
    };
    given(roomy(), history.clone())
        .when(&unknown)
        .then_record(|r| assert_eq!(r.escalation, Some(BTreeMap::new())));
    // What is sent or applied is not escalated.
    given(roomy(), history)
        .when(&decision("c", "n3", Escalate, 1.0))
        .then_record(|r| assert_eq!(r.escalation, None));
}
