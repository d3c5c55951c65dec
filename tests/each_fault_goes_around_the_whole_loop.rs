//! Each kind of fault, injected in a small simulated mesh, goes around the whole loop: analyze
//! finds it, plan answers with the action the default policy gives it, execute sends it to the
//! simulated node (which really changes), and evaluate judges whether it cleared the symptom.

mod sim_loop;

use std::time::Duration;

use mapek_bus::{JetStream, Subscriber, SubscriberConfig};
use mapek_domain::{
    ActionKind, ActionResult, ActionStatus, Decision, Outcome, OutcomeResult, Policy, SymptomKind,
};
use mapek_loop::plan::PlanStage;
use mapek_sim::Fault;
use sim_loop::{SimLoop, first_where, id};

const WITHIN: Duration = Duration::from_secs(20);

/// What the loop did about one fault on one node.
struct Story {
    decision: Decision,
    kind: SymptomKind,
    result: ActionResult,
    outcome: Option<Outcome>,
}

/// Runs the whole loop around a simulated mesh with `fault` (starting at 5 s), and tells
/// what happened to the first decision on `node`.
async fn story(fault: Fault, node: &str) -> Story {
    let sim = SimLoop::start(vec![fault], |_| {
        PlanStage::without_knowledge(Policy::builtin())
    })
    .await;
    let js = &sim.js;
    let (decision, kind) = first_decision(js, node).await;
    let result =
        first_where::<ActionResult>(js, node, WITHIN, |r| r.decision_id == decision.decision_id)
            .await;
    let outcome = if result.status == ActionStatus::Applied {
        Some(
            first_where::<Outcome>(js, node, WITHIN, |o| o.decision_id == decision.decision_id)
                .await,
        )
    } else {
        None
    };
    Story {
        decision,
        kind,
        result,
        outcome,
    }
}

async fn first_decision(js: &JetStream, node: &str) -> (Decision, SymptomKind) {
    let mut decisions = Subscriber::<Decision>::open(js, SubscriberConfig::node(id(node)))
        .await
        .unwrap();
    let decision = tokio::time::timeout(WITHIN, decisions.next())
        .await
        .unwrap_or_else(|_| panic!("no decision for {node} within 20 s"))
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    let mut symptoms =
        Subscriber::<mapek_domain::Symptom>::open(js, SubscriberConfig::node(id(node)))
            .await
            .unwrap();
    loop {
        let s = symptoms.next().await.unwrap().unwrap().event.unwrap();
        if s.symptom_id == decision.symptom_id {
            return (decision, s.kind);
        }
    }
}

#[tokio::test]
async fn a_degraded_link_is_rerouted_around() {
    let fault = Fault::LinkDegradation {
        start_s: 5.0,
        duration_s: None,
        a: id("n0"),
        b: id("n1"),
        added_latency_ms: 80.0,
        added_loss: 0.3,
    };
    let s = story(fault, "n0").await;
    assert_eq!(s.kind, SymptomKind::PacketLoss);
    assert_eq!(s.decision.action.kind, ActionKind::Reroute);
    assert_eq!(
        s.decision.action.peer,
        Some(id("n1")),
        "{}",
        s.decision.reason
    );
    assert_eq!(
        s.result.status,
        ActionStatus::Applied,
        "{}",
        s.result.reason
    );
    let outcome = s.outcome.unwrap();
    assert_eq!(
        outcome.result,
        OutcomeResult::Resolved,
        "{}",
        outcome.detail
    );
    assert!(outcome.recovery_ms.is_some_and(|ms| ms > 0));
}

#[tokio::test]
async fn a_cpu_hog_is_answered_on_its_node_and_stops() {
    let fault = Fault::CpuHog {
        start_s: 5.0,
        duration_s: None,
        node: id("n2"),
    };
    let s = story(fault, "n2").await;
    assert_eq!(s.kind, SymptomKind::CpuSaturation);
    let d = &s.decision;
    assert!(
        matches!(
            d.action.kind,
            ActionKind::RateLimit | ActionKind::RestartService
        ),
        "{:?}: {}",
        d.action,
        d.reason
    );
    assert_eq!(
        s.result.status,
        ActionStatus::Applied,
        "{}",
        s.result.reason
    );
    let outcome = s.outcome.unwrap();
    assert_eq!(
        outcome.result,
        OutcomeResult::Resolved,
        "the hog stops: {}",
        outcome.detail
    );
}

#[tokio::test]
async fn a_flapping_link_is_acted_on_and_judged() {
    let fault = Fault::FlappingLink {
        start_s: 5.0,
        duration_s: None,
        a: id("n3"),
        b: id("n4"),
        every_ticks: 3,
    };
    let s = story(fault, "n3").await;
    // Loss over the flapping link may be seen before the flapping itself.
    assert!(
        matches!(s.kind, SymptomKind::LinkFlapping | SymptomKind::PacketLoss),
        "{:?}",
        s.kind
    );
    if s.kind == SymptomKind::LinkFlapping {
        assert_eq!(s.decision.action.kind, ActionKind::Reroute);
        assert_eq!(s.decision.action.peer, Some(id("n4")));
    }
    assert_eq!(
        s.result.status,
        ActionStatus::Applied,
        "{}",
        s.result.reason
    );
    assert!(s.outcome.is_some(), "an applied action is judged");
}

#[tokio::test]
async fn a_crashed_node_is_found_silent_and_acted_on() {
    let fault = Fault::NodeCrash {
        start_s: 5.0,
        duration_s: None,
        node: id("n5"),
    };
    let s = story(fault, "n5").await;
    assert_eq!(s.kind, SymptomKind::NodeSilent);
    assert_ne!(
        s.decision.action.kind,
        ActionKind::Reroute,
        "{}",
        s.decision.reason
    );
    // Nothing is applied to a crashed node: its agent cannot answer (failed), or an interlock
    // holds the action first (its neighbours' symptoms may have used up the blast radius).
    assert_ne!(s.result.status, ActionStatus::Applied, "{:?}", s.result);
    assert!(!s.result.reason.is_empty());
    assert!(s.outcome.is_none(), "an action not applied is not judged");
}

#[tokio::test]
async fn a_lasting_partition_is_acted_on_and_judged_not_resolved() {
    let fault = Fault::Partition {
        start_s: 5.0,
        duration_s: None,
        nodes: vec![id("n6"), id("n7")],
    };
    let s = story(fault, "n6").await;
    assert!(
        matches!(s.kind, SymptomKind::PacketLoss | SymptomKind::HighLatency),
        "{:?}",
        s.kind
    );
    assert!(!s.decision.reason.is_empty());
    // Restarting a service does not heal a partition that lasts.
    if s.result.status == ActionStatus::Applied && s.decision.action.kind != ActionKind::Escalate {
        let outcome = s.outcome.unwrap();
        assert_eq!(
            outcome.result,
            OutcomeResult::NotResolved,
            "{}",
            outcome.detail
        );
    }
}
