//! A plan worker rebuilds its state at start by replaying the symptoms it already decided.
//! If it replayed them with today's knowledge, a symptom decided before a past incident was
//! known could now be decided differently, and the rebuilt cooldowns would not be those of
//! the decisions actually published. The worker replays with the knowledge each recorded
//! decision consulted instead, so its state after a restart is the state it decided from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mapek_bus::{JetStream, Publisher, StartAt, Subscriber};
use mapek_domain::{
    Action, ActionKind, Decision, Outcome, OutcomeResult, Policy, Symptom, SymptomKind,
    SymptomState,
};
use mapek_loop::plan::PlanStage;
use mapek_loop::{StageConfig, run_stage};
use mapek_testkit::{NatsServer, samples};
use mapek_vectors::{EdgeIndex, Incident, IncidentIndex, IndexKnowledge, Offsets};

const T0: i64 = 1_795_867_200_000;
const POLICY: &str = include_str!("policies/escalate-cpu-first.toml");

fn cpu(incident: &str, node: &str, ts_ms: i64) -> Symptom {
    Symptom {
        symptom_id: format!("s-{incident}"),
        incident_id: incident.into(),
        node: samples::node(node),
        ts_ms,
        kind: SymptomKind::CpuSaturation,
        state: SymptomState::Open,
        severity: 0.97 / 0.9,
        peer: None,
        evidence: BTreeMap::from([
            ("mean_cpu".to_owned(), 0.97),
            ("cpu_threshold".to_owned(), 0.9),
        ]),
        summary: "mean cpu 97%".into(),
        caused_by: "t".into(),
    }
}

/// A past CPU incident on `node` that `restart_service` resolved, judged at `judged_ms`.
fn restarted_and_resolved(node: &str, opened_ms: i64, judged_ms: i64) -> Incident {
    let s = cpu("past", node, opened_ms);
    let mut d = samples::decision();
    (d.decision_id, d.incident_id, d.ts_ms) = ("d-past".into(), "past".into(), opened_ms);
    d.action = Action {
        kind: ActionKind::RestartService,
        peer: None,
        service: Some("meshd".into()),
        params: BTreeMap::new(),
    };
    let mut o: Outcome = samples::outcome();
    (o.decision_id, o.incident_id, o.ts_ms) = ("d-past".into(), "past".into(), judged_ms);
    o.result = OutcomeResult::Resolved;
    let mut i = Incident::new("past", node);
    i.apply_symptom(&s);
    i.apply_decision(&d);
    i.apply_outcome(&o);
    assert!(i.ready);
    i
}

/// Starts a plan worker on the whole analyze stream (durable `plan`) with the index's
/// knowledge; the returned sender stops it.
fn start_worker(
    js: &JetStream,
    index: Arc<dyn IncidentIndex>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<mapek_loop::StageStats, mapek_bus::BusError>>,
) {
    let policy = Policy::parse(POLICY).unwrap();
    let stage = PlanStage::new(policy, Box::new(IndexKnowledge::new(index)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_stage(
        js.clone(),
        stage,
        StageConfig::new("plan", None),
        mapek_bus::until_stopped(stopped),
    ));
    (stop, task)
}

/// The decision on `symptom_id`, within 20 s.
async fn decision_on(js: &JetStream, symptom_id: &str) -> Decision {
    let filter = mapek_domain::Phase::Plan.stored_filter(None);
    let mut decisions = Subscriber::<Decision>::open_subject(js, filter, StartAt::All)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let d = decisions.next().await.unwrap().unwrap().event.unwrap();
            if d.symptom_id == symptom_id {
                return d;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no decision on {symptom_id} within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plan_worker_rebuilds_with_the_knowledge_its_decisions_recorded() {
    let server = NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index: Arc<dyn IncidentIndex> = Arc::new(EdgeIndex::open(&dir.path().join("i")).unwrap());

    // With nothing known, the first CPU incident on n1 is escalated (the policy's order).
    let (stop, task) = start_worker(&js, index.clone());
    let first = cpu("first", "n1", T0 + 1_000_000);
    let mut p = Publisher::new(js.clone());
    p.publish(&first).await.unwrap();
    p.flush().await;
    let d1 = decision_on(&js, &first.symptom_id).await;
    assert_eq!(d1.action.kind, ActionKind::Escalate, "{}", d1.reason);
    assert!(d1.knowledge.is_empty());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // Knowledge grows: a restart that resolved an incident, judged before the first one
    // opened, arrives late in the index. Replayed with it, the first incident would now be
    // restarted, and restart_service would be in cooldown on n1 for 600 s.
    let past = restarted_and_resolved("n7", T0, T0 + 500_000);
    index.write(vec![past], Offsets::default()).await.unwrap();

    let (stop, task) = start_worker(&js, index.clone());
    let second = cpu("second", "n1", T0 + 1_200_000);
    p.publish(&second).await.unwrap();
    p.flush().await;
    let d2 = decision_on(&js, &second.symptom_id).await;
    assert_eq!(
        d2.action.kind,
        ActionKind::RestartService,
        "the rebuilt state must hold the escalation that was published, not a restart: {}",
        d2.reason
    );
    assert!(!d2.reason.contains("cooldown"), "{}", d2.reason);
    assert_eq!(d2.knowledge.len(), 1);
    assert_eq!(d2.knowledge[0].incident_id, "past");
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(
        stats.replayed, 1,
        "the first symptom was replayed, not decided again"
    );
}
