//! Each kind of fault, injected in a small simulated mesh, is found by analyze and answered by
//! plan with the action the default policy gives it.

use std::time::Duration;

use mapek_bus::{JetStream, StartAt, Subscriber, SubscriberConfig};
use mapek_domain::{ActionKind, AnalyzeConfig, Analyzer, Decision, NodeId, Policy, SymptomKind};
use mapek_loop::lease::run_partitioned;
use mapek_loop::plan::PlanStage;
use mapek_sim::{Fault, FaultScript, Mesh, MeshConfig};
use mapek_testkit::NatsServer;

const T0: i64 = 1_795_867_200_000;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Runs a 32-node mesh (every partition has nodes whose telemetry moves its watermark) with `fault` (starting at 5 s) through analyze and plan, 20 times
/// faster than the clock, until a decision for `node` appears; returns it.
async fn decision_for(fault: Fault, node: &str) -> (Decision, SymptomKind) {
    let server = NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    let client = mapek_bus::connect_client(&server.url()).await.unwrap();
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin())
        .await
        .unwrap();
    let script = FaultScript { fault: vec![fault] };
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
    let mut tasks = vec![
        tokio::spawn(mapek_sim::run_faster(
            js.clone(),
            client,
            mesh,
            20.0,
            1000,
            T0,
            wait(stopped.clone()),
        ))
        .abort_handle(),
    ];
    tasks.push(
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
    );
    tasks.push(
        tokio::spawn(run_partitioned(
            js.clone(),
            "plan",
            8,
            "t".into(),
            Duration::from_secs(3),
            |_| PlanStage::without_knowledge(Policy::builtin()),
            wait(stopped.clone()),
        ))
        .abort_handle(),
    );
    let found = first_decision(&js, node).await;
    stop.send(true).unwrap();
    drop(tasks);
    found
}

async fn first_decision(js: &JetStream, node: &str) -> (Decision, SymptomKind) {
    let mut decisions = Subscriber::<Decision>::open(
        js,
        SubscriberConfig {
            node: Some(id(node)),
            start: StartAt::All,
        },
    )
    .await
    .unwrap();
    let decision = tokio::time::timeout(Duration::from_secs(20), decisions.next())
        .await
        .unwrap_or_else(|_| panic!("no decision for {node} within 20 s"))
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    let mut symptoms = Subscriber::<mapek_domain::Symptom>::open(
        js,
        SubscriberConfig {
            node: Some(id(node)),
            start: StartAt::All,
        },
    )
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
    let (d, kind) = decision_for(fault, "n0").await;
    assert_eq!(kind, SymptomKind::PacketLoss);
    assert_eq!(d.action.kind, ActionKind::Reroute);
    assert_eq!(d.action.peer, Some(id("n1")), "{}", d.reason);
}

#[tokio::test]
async fn a_cpu_hog_is_answered_on_its_node() {
    let fault = Fault::CpuHog {
        start_s: 5.0,
        duration_s: None,
        node: id("n2"),
    };
    let (d, kind) = decision_for(fault, "n2").await;
    assert_eq!(kind, SymptomKind::CpuSaturation);
    assert!(
        matches!(
            d.action.kind,
            ActionKind::RateLimit | ActionKind::RestartService
        ),
        "{:?}: {}",
        d.action,
        d.reason
    );
}

#[tokio::test]
async fn a_flapping_link_is_rerouted_around() {
    let fault = Fault::FlappingLink {
        start_s: 5.0,
        duration_s: None,
        a: id("n3"),
        b: id("n4"),
        every_ticks: 3,
    };
    let (d, kind) = decision_for(fault, "n3").await;
    // Loss over the flapping link may be seen before the flapping itself.
    assert!(
        matches!(kind, SymptomKind::LinkFlapping | SymptomKind::PacketLoss),
        "{kind:?}"
    );
    if kind == SymptomKind::LinkFlapping {
        assert_eq!(d.action.kind, ActionKind::Reroute);
        assert_eq!(d.action.peer, Some(id("n4")));
    }
}

#[tokio::test]
async fn a_crashed_node_is_found_silent_and_acted_on() {
    let fault = Fault::NodeCrash {
        start_s: 5.0,
        duration_s: None,
        node: id("n5"),
    };
    let (d, kind) = decision_for(fault, "n5").await;
    assert_eq!(kind, SymptomKind::NodeSilent);
    assert_ne!(d.action.kind, ActionKind::Reroute, "{}", d.reason);
}

#[tokio::test]
async fn a_partitioned_node_is_acted_on() {
    let fault = Fault::Partition {
        start_s: 5.0,
        duration_s: None,
        nodes: vec![id("n6"), id("n7")],
    };
    let (d, kind) = decision_for(fault, "n6").await;
    assert!(
        matches!(kind, SymptomKind::PacketLoss | SymptomKind::HighLatency),
        "{kind:?}"
    );
    assert!(!d.reason.is_empty());
}
