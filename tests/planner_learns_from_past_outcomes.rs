//! The planner learns from outcomes, end to end: a simulated mesh, a real nats-server and
//! the incident index in qdrant-edge, every phase running. The policy escalates a saturated
//! CPU first (tests/policies/escalate-cpu-first.toml); in the simulator a CPU hog lasts until
//! its service is restarted, so the escalation is judged "not resolved". The incident
//! projection puts that outcome in the index, and the next CPU incident's decision, ranked by
//! the similar past incidents, restarts the service instead; once a restart has resolved one,
//! the next is restarted again, with that success in its evidence.

use std::sync::Arc;
use std::time::Duration;

use mapek_bus::{JetStream, Subscriber, SubscriberConfig};
use mapek_domain::{
    ActionKind, AnalyzeConfig, Analyzer, Decision, ExecuteConfig, NodeId, Outcome, OutcomeResult,
    Policy, SymptomKind,
};
use mapek_loop::lease::run_partitioned;
use mapek_loop::plan::PlanStage;
use mapek_sim::{Fault, FaultScript, Mesh, MeshConfig};
use mapek_testkit::NatsServer;
use mapek_vectors::{EdgeIndex, IncidentIndex, IndexKnowledge};

const T0: i64 = 1_795_867_200_000;
const POLICY: &str = include_str!("policies/escalate-cpu-first.toml");

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// The first stored `E` about `node` that passes `want`, within 60 s.
async fn first_where<E: mapek_codec::AvroEvent>(
    js: &JetStream,
    node: &str,
    want: impl Fn(&E) -> bool,
) -> E {
    let mut sub = Subscriber::<E>::open(js, SubscriberConfig::node(id(node)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let e = sub.next().await.unwrap().unwrap().event.unwrap();
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {} for {node} within 60 s", E::SCHEMA))
}

/// The first decision on `node`, and the outcome judged on it.
async fn decided_and_judged(js: &JetStream, node: &str) -> (Decision, Outcome) {
    let d = first_where::<Decision>(js, node, |_| true).await;
    let o = first_where::<Outcome>(js, node, |o| o.decision_id == d.decision_id).await;
    (d, o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_cpu_incidents_choose_the_action_that_worked_before() {
    let server = NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    let client = mapek_bus::connect_client(&server.url()).await.unwrap();
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index: Arc<dyn IncidentIndex> =
        Arc::new(EdgeIndex::open(&EdgeIndex::default_dir(dir.path())).unwrap());

    // Three hung services, one after another, each until restarted.
    let hog = |start_s: f64, node: &str| Fault::CpuHog {
        start_s,
        duration_s: None,
        node: id(node),
    };
    let script = FaultScript {
        fault: vec![hog(5.0, "n3"), hog(70.0, "n9"), hog(135.0, "n15")],
    };
    let mesh = Mesh::new(
        MeshConfig {
            nodes: 32,
            ..MeshConfig::default()
        },
        3,
    )
    .unwrap()
    .with_faults(&script)
    .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let analyze = AnalyzeConfig {
        silent_after_ms: 10_000,
        ..AnalyzeConfig::default()
    };
    let policy = Policy::parse(POLICY).unwrap();
    let execute = ExecuteConfig {
        known_nodes: 32,
        evaluate_window_ms: 30_000,
        command_timeout_ms: 500,
        ..ExecuteConfig::default()
    };
    let knowledge = index.clone();
    let tasks = [
        tokio::spawn(mapek_sim::run_faster(
            js.clone(),
            client.clone(),
            mesh,
            20.0,
            1000,
            T0,
            wait(stopped.clone()),
        ))
        .abort_handle(),
        tokio::spawn(run_partitioned(
            js.clone(),
            "analyze",
            8,
            "t".into(),
            Duration::from_secs(3),
            move |_| Analyzer::new(analyze.clone()),
            wait(stopped.clone()),
        ))
        .abort_handle(),
        tokio::spawn(run_partitioned(
            js.clone(),
            "plan",
            8,
            "t".into(),
            Duration::from_secs(3),
            move |_| {
                PlanStage::new(
                    policy.clone(),
                    Box::new(IndexKnowledge::new(knowledge.clone())),
                )
            },
            wait(stopped.clone()),
        ))
        .abort_handle(),
        tokio::spawn(mapek_loop::execute::run(
            js.clone(),
            client.clone(),
            execute.clone(),
            wait(stopped.clone()),
        ))
        .abort_handle(),
        tokio::spawn(mapek_loop::evaluate::run(
            js.clone(),
            execute,
            wait(stopped.clone()),
        ))
        .abort_handle(),
        tokio::spawn(mapek_vectors::project(
            js.clone(),
            index.clone(),
            wait(stopped.clone()),
        ))
        .abort_handle(),
    ];

    // The first: nothing known, so the policy's order, and escalating does not cure a hog.
    let (d1, o1) = decided_and_judged(&js, "n3").await;
    assert_eq!(d1.action.kind, ActionKind::Escalate, "{}", d1.reason);
    assert!(d1.knowledge.is_empty(), "{:?}", d1.knowledge);
    assert_eq!(o1.result, OutcomeResult::NotResolved, "{}", o1.detail);

    // The second: the first is the nearest past incident, and its escalation failed.
    let (d2, o2) = decided_and_judged(&js, "n9").await;
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
    let (d3, _) = decided_and_judged(&js, "n15").await;
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
    stop.send(true).unwrap();
    drop(tasks);
}
