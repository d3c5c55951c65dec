//! A plan worker rebuilds its state at start by replaying the symptoms it already decided.
//! If it replayed them with today's knowledge, a symptom decided before a past incident was
//! known could now be decided differently, and the rebuilt cooldowns would not be those of
//! the decisions actually published. The worker replays with the knowledge each recorded
//! decision consulted instead, so its state after a restart is the state it decided from.
//!
//! The same holds for a symptom whose decision was stored by a worker that died before
//! acknowledging the symptom: the worker that takes over is handed the symptom again, and
//! must make the stored decision again (the server drops its copy as a duplicate), not one
//! of its own knowledge, or its next decision would chain to a decision that is not in the
//! log.

use std::sync::Arc;
use std::time::Duration;

use mapek_bus::{JetStream, Publisher, StartAt, Subscriber};
use mapek_domain::plan::NoKnowledge;
use mapek_domain::{ActionKind, Decision, Planner, Policy, Symptom};
use mapek_loop::plan::PlanStage;
use mapek_loop::{StageConfig, run_stage};
use mapek_testkit::samples;
use mapek_vectors::{EdgeIndex, Incident, IncidentIndex, IndexKnowledge, Offsets};

const T0: i64 = 1_795_867_200_000;
const POLICY: &str = include_str!("policies/escalate-cpu-first.toml");

/// A symptom opening a CPU incident on `node`, its mean CPU 97%.
fn cpu(incident: &str, node: &str, ts_ms: i64) -> Symptom {
    samples::cpu_symptom(incident, node, ts_ms, 0.97)
}

/// A past CPU incident on `node` that `restart_service` resolved, judged at `judged_ms`.
fn restarted_and_resolved(node: &str, opened_ms: i64, judged_ms: i64) -> Incident {
    let s = cpu("past", node, opened_ms);
    let (d, o) = samples::closing(&s, ActionKind::RestartService, judged_ms, true);
    let i = Incident::folded(&s, Some(&d), Some(&o));
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

/// Knowledge grows (a restart on n7 that resolved an incident before the first one on n1
/// opened arrives late in the index), a worker starts, and a second CPU incident opens on
/// n1: its decision, and the worker.
async fn after_knowledge_grew(
    js: &JetStream,
    index: &Arc<dyn IncidentIndex>,
    p: &mut Publisher,
) -> (
    Decision,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<mapek_loop::StageStats, mapek_bus::BusError>>,
) {
    let past = restarted_and_resolved("n7", T0, T0 + 500_000);
    index.write(vec![past], Offsets::default()).await.unwrap();
    let (stop, task) = start_worker(js, index.clone());
    let second = cpu("second", "n1", T0 + 1_200_000);
    p.publish(&second).await.unwrap();
    p.flush().await;
    (decision_on(js, &second.symptom_id).await, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plan_worker_rebuilds_with_the_knowledge_its_decisions_recorded() {
    let (_server, js) = mapek_testkit::server_with_streams().await;
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
    let (d2, stop, task) = after_knowledge_grew(&js, &index, &mut p).await;
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

/// A worker with nothing known decided on the first CPU incident on n1 (it escalated) and
/// stored its decision, then died before acknowledging the symptom; with `acknowledged_before`
/// it had decided on and acknowledged an incident on n2 first. The worker that takes over
/// (knowing by now that a restart resolved such an incident) is handed the first incident
/// again: it must make the stored decision again and chain the next one to it.
async fn taking_over_a_decided_symptom(acknowledged_before: bool) {
    let (_server, js) = mapek_testkit::server_with_streams().await;
    let dir = tempfile::tempdir().unwrap();
    let index: Arc<dyn IncidentIndex> = Arc::new(EdgeIndex::open(&dir.path().join("i")).unwrap());
    let mut p = Publisher::new(js.clone());

    // The decisions the dead worker took, as its planner took them.
    let mut planner = Planner::new(Policy::parse(POLICY).unwrap());
    if acknowledged_before {
        let (stop, task) = start_worker(&js, index.clone());
        let zero = cpu("zero", "n2", T0 + 900_000);
        p.publish(&zero).await.unwrap();
        p.flush().await;
        let d0 = decision_on(&js, &zero.symptom_id).await;
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert_eq!(planner.decide(&zero, &NoKnowledge), Some(d0));
    }
    let first = cpu("first", "n1", T0 + 1_000_000);
    let stored = planner.decide(&first, &NoKnowledge).unwrap();
    assert_eq!(
        stored.action.kind,
        ActionKind::Escalate,
        "{}",
        stored.reason
    );
    p.publish(&first).await.unwrap();
    p.publish(&stored).await.unwrap();
    p.flush().await;

    // Decided on today's knowledge, the first incident would be restarted, and
    // restart_service would be in cooldown on n1 for 600 s.
    let (d2, stop, task) = after_knowledge_grew(&js, &index, &mut p).await;
    assert_eq!(
        d2.prev_hash,
        stored.chain_hash(),
        "the next decision must chain to the stored one"
    );
    assert_eq!(
        d2.action.kind,
        ActionKind::RestartService,
        "the state must hold the stored escalation, not a restart: {}",
        d2.reason
    );
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.processed, 2, "{stats:?}");
    assert_eq!(decision_on(&js, &first.symptom_id).await, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_worker_taking_over_a_decided_symptom_makes_the_stored_decision_again() {
    taking_over_a_decided_symptom(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_plan_worker_that_died_before_acknowledging_anything_is_followed_likewise() {
    taking_over_a_decided_symptom(false).await;
}
