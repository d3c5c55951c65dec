//! The planner learns from outcomes, end to end: a simulated mesh, a real nats-server and
//! the incident index in qdrant-edge (and in a Qdrant server when QDRANT_URL names one),
//! every phase running. The policy escalates a saturated
//! CPU first (tests/policies/escalate-cpu-first.toml); in the simulator a CPU hog lasts until
//! its service is restarted, so the escalation is judged "not resolved". The incident
//! projection puts that outcome in the index, and the next CPU incident's decision, ranked by
//! the similar past incidents, restarts the service instead; once a restart has resolved one,
//! the next is restarted again, with that success in its evidence.

mod sim_loop;

use std::sync::Arc;
use std::time::Duration;

use mapek_bus::JetStream;
use mapek_domain::{ActionKind, Decision, Outcome, OutcomeResult, Policy, SymptomKind};
use mapek_loop::plan::PlanStage;
use mapek_sim::Fault;
use mapek_vectors::{EdgeIndex, IncidentIndex, IndexKnowledge};
use sim_loop::{SimLoop, first_where, id};

mod qdrant_server;

const POLICY: &str = include_str!("policies/escalate-cpu-first.toml");
const WITHIN: Duration = Duration::from_secs(60);

/// The first decision on `node`, and the outcome judged on it.
async fn decided_and_judged(js: &JetStream, node: &str) -> (Decision, Outcome) {
    let d = first_where::<Decision>(js, node, WITHIN, |_| true).await;
    let o = first_where::<Outcome>(js, node, WITHIN, |o| o.decision_id == d.decision_id).await;
    (d, o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_cpu_incidents_choose_the_action_that_worked_before() {
    let dir = tempfile::tempdir().unwrap();
    learns(Arc::new(
        EdgeIndex::open(&EdgeIndex::default_dir(dir.path())).unwrap(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_qdrant_server_later_cpu_incidents_choose_the_action_that_worked_before() {
    let Some(collection) = qdrant_server::TestCollection::new("planner") else {
        return;
    };
    learns(collection.open().await).await;
    collection.delete().await;
}

/// The scenario, with the incident index `index`.
async fn learns(index: Arc<dyn IncidentIndex>) {
    // Three hung services, one after another, each until restarted.
    let hog = |start_s: f64, node: &str| Fault::CpuHog {
        start_s,
        duration_s: None,
        node: id(node),
    };
    let policy = Policy::parse(POLICY).unwrap();
    let knowledge = index.clone();
    let sim = SimLoop::start(
        vec![hog(5.0, "n3"), hog(70.0, "n9"), hog(135.0, "n15")],
        move |_| {
            PlanStage::new(
                policy.clone(),
                Box::new(IndexKnowledge::new(knowledge.clone())),
            )
        },
    )
    .await;
    let projected = index.clone();
    let js = sim.js.clone();
    sim.spawn(|stopped| mapek_vectors::project(js, projected, stopped));
    let js = &sim.js;

    // The first: nothing known, so the policy's order, and escalating does not cure a hog.
    let (d1, o1) = decided_and_judged(js, "n3").await;
    assert_eq!(d1.action.kind, ActionKind::Escalate, "{}", d1.reason);
    assert!(d1.knowledge.is_empty(), "{:?}", d1.knowledge);
    assert_eq!(o1.result, OutcomeResult::NotResolved, "{}", o1.detail);

    // The second: the first is the nearest past incident, and its escalation failed.
    let (d2, o2) = decided_and_judged(js, "n9").await;
    assert_eq!(d2.action.kind, ActionKind::RestartService, "{}", d2.reason);
    let n = d2
        .knowledge
        .iter()
        .find(|n| n.incident_id == d1.incident_id)
        .unwrap_or_else(|| panic!("n3's incident is not among {:?}", d2.knowledge));
    assert_eq!((n.action, n.resolved), (ActionKind::Escalate, false));
    assert!(n.score > 0.9, "two hogs are alike: {}", n.score);
    assert!(d2.reason.contains("escalate -"), "{}", d2.reason);
    assert_eq!(o2.result, OutcomeResult::Resolved, "{}", o2.detail);

    // The third: both are known; the restart that worked leads.
    let (d3, _) = decided_and_judged(js, "n15").await;
    assert_eq!(d3.action.kind, ActionKind::RestartService, "{}", d3.reason);
    assert!(
        d3.knowledge
            .iter()
            .any(|n| n.incident_id == d2.incident_id && n.resolved),
        "{:?}",
        d3.knowledge
    );
    assert!(d3.reason.contains("restart_service +"), "{}", d3.reason);

    let past = index.get(&d2.incident_id).await.unwrap().unwrap();
    assert_eq!(past.kind, Some(SymptomKind::CpuSaturation));
    assert_eq!(past.resolved, Some(true));
}
