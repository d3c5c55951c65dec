//! The incident projection: the analyze, plan and knowledge streams of a real nats-server
//! folded into points in qdrant-edge, and in a Qdrant server when QDRANT_URL names one.
//! Stopped and started again it resumes exactly after the
//! last event it stored (nothing read twice, nothing missed), events that arrive out of order
//! across streams give the same points, and a rebuild from the log gives the same index.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mapek_bus::{JetStream, Publisher};
use mapek_domain::{Action, ActionKind, Decision, Outcome, OutcomeResult, Symptom, SymptomState};
use mapek_testkit::samples;
use mapek_vectors::{EdgeIndex, IncidentIndex, Offsets, ProjectStats};

mod qdrant_server;

const T0: i64 = 1_795_867_200_000;

fn symptom(incident: &str, node: &str, ts_ms: i64, state: SymptomState) -> Symptom {
    Symptom {
        symptom_id: format!("s-{incident}-{ts_ms}"),
        state,
        ..samples::cpu_symptom(incident, node, ts_ms, 0.97)
    }
}

fn decision(s: &Symptom, action: ActionKind) -> Decision {
    let mut d = samples::decision();
    d.decision_id = format!("d-{}", s.incident_id);
    d.symptom_id = s.symptom_id.clone();
    d.incident_id = s.incident_id.clone();
    d.node = s.node.clone();
    d.ts_ms = s.ts_ms;
    d.action = Action {
        kind: action,
        peer: None,
        service: None,
        params: BTreeMap::new(),
    };
    d
}

fn outcome(d: &Decision, resolved: bool) -> Outcome {
    let mut o = samples::outcome();
    o.outcome_id = format!("o-{}", d.incident_id);
    o.decision_id = d.decision_id.clone();
    o.incident_id = d.incident_id.clone();
    o.node = d.node.clone();
    o.ts_ms = d.ts_ms + 30_000;
    o.result = if resolved {
        OutcomeResult::Resolved
    } else {
        OutcomeResult::NotResolved
    };
    o
}

/// Publishes an incident's opening symptom, its decision to `action` and its outcome.
async fn publish_closed(
    js: &JetStream,
    incident: &str,
    node: &str,
    ts_ms: i64,
    action: ActionKind,
    resolved: bool,
) {
    let s = symptom(incident, node, ts_ms, SymptomState::Open);
    let d = decision(&s, action);
    let o = outcome(&d, resolved);
    publish_all(js, &[s], &[d], &[o]).await;
}

/// Offsets `n` into each of the three streams.
fn through(n: u64) -> Offsets {
    Offsets {
        analyze: n,
        plan: n,
        knowledge: n,
    }
}

/// Projects until the index's offsets reach the streams' ends, then stops the projection.
async fn project_until_caught_up(
    js: &JetStream,
    index: Arc<dyn IncidentIndex>,
    want: Offsets,
) -> ProjectStats {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(mapek_vectors::project(
        js.clone(),
        index.clone(),
        mapek_bus::until_stopped(stopped),
    ));
    tokio::time::timeout(Duration::from_secs(20), async {
        while index.offsets().await.unwrap() != want {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the projection catches up within 20 s");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap()
}

async fn publish_all(
    js: &JetStream,
    symptoms: &[Symptom],
    decisions: &[Decision],
    outcomes: &[Outcome],
) {
    let mut p = Publisher::new(js.clone());
    for s in symptoms {
        p.publish(s).await.unwrap();
    }
    for d in decisions {
        p.publish(d).await.unwrap();
    }
    for o in outcomes {
        p.publish(o).await.unwrap();
    }
    assert!(p.finish().await.all_acked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_resumes_exactly_and_a_rebuild_gives_the_same_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incidents");
    resumes_exactly_and_rebuilds_the_same(async || {
        Arc::new(EdgeIndex::open(&path).unwrap()) as Arc<dyn IncidentIndex>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_into_a_qdrant_server_resumes_exactly_and_rebuilds_the_same() {
    let Some(collection) = qdrant_server::TestCollection::new("projection") else {
        return;
    };
    resumes_exactly_and_rebuilds_the_same(async || {
        collection.open().await as Arc<dyn IncidentIndex>
    })
    .await;
    collection.delete().await;
}

/// The scenario on the index `open` opens (again, as a new process would, the second time).
async fn resumes_exactly_and_rebuilds_the_same(open: impl AsyncFn() -> Arc<dyn IncidentIndex>) {
    let (_server, js) = mapek_testkit::server_with_streams().await;

    // Incident a: opened, updated, escalated, not resolved. Incident b: restarted,
    // resolved, but its outcome is published before its decision and its symptom.
    let a = symptom("a", "n1", T0, SymptomState::Open);
    let a_update = symptom("a", "n1", T0 + 5_000, SymptomState::Update);
    let da = decision(&a, ActionKind::Escalate);
    let oa = outcome(&da, false);
    let b = symptom("b", "n2", T0 + 60_000, SymptomState::Open);
    let db = decision(&b, ActionKind::RestartService);
    let ob = outcome(&db, true);
    publish_all(&js, &[], &[], std::slice::from_ref(&ob)).await;
    publish_all(&js, &[a.clone(), a_update, b.clone()], &[da, db], &[oa]).await;

    let index = open().await;
    let first = Offsets {
        analyze: 3,
        plan: 2,
        knowledge: 2,
    };
    let stats = project_until_caught_up(&js, index.clone(), first).await;
    assert_eq!(stats.events, 7);
    assert_eq!(stats.skipped, 0);
    let got_a = index.get("a").await.unwrap().unwrap();
    assert!(got_a.ready);
    assert_eq!(
        (
            got_a.action,
            got_a.resolved,
            got_a.opened_ms,
            got_a.outcome_ms
        ),
        (
            Some(ActionKind::Escalate),
            Some(false),
            Some(T0),
            Some(T0 + 30_000)
        )
    );
    let got_b = index.get("b").await.unwrap().unwrap();
    assert!(
        got_b.ready,
        "out of order across streams, b still comes together"
    );
    assert_eq!(got_b.action, Some(ActionKind::RestartService));
    assert_eq!(got_b.resolved, Some(true));

    // Stopped; a third incident comes in; the index is reopened (a new process).
    drop(index);
    let c = symptom("c", "n3", T0 + 120_000, SymptomState::Open);
    let dc = decision(&c, ActionKind::RestartService);
    publish_all(&js, &[c], std::slice::from_ref(&dc), &[outcome(&dc, true)]).await;
    let index = open().await;
    let second = Offsets {
        analyze: 4,
        plan: 3,
        knowledge: 3,
    };
    let stats = project_until_caught_up(&js, index.clone(), second).await;
    assert_eq!(
        (stats.events, stats.skipped),
        (3, 0),
        "only the new events are read"
    );
    // c's three events may come in one batch or in up to three (one per stream), and a point
    // is written once per batch that changes it: one to three writes, all of c (a and b were
    // not read again, so nothing could rewrite them).
    assert!(
        (1..=3).contains(&stats.written),
        "only c is written: {} writes",
        stats.written
    );
    assert_eq!(index.count().await.unwrap(), 3);

    // A rebuild from the log clears the index and comes to the same points.
    let before: Vec<_> = futures::future::join_all(["a", "b", "c"].map(|id| index.get(id)))
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let stats = mapek_vectors::rebuild(&js, index.clone()).await.unwrap();
    assert_eq!(stats.offsets, second);
    assert_eq!(stats.events, 10);
    for mut b in before {
        let mut after = index.get(&b.incident_id).await.unwrap().unwrap();
        // The engine stores cosine vectors normalised, so a vector written twice may differ
        // from one written once in the last bit.
        let close = after
            .features
            .iter()
            .zip(&b.features)
            .all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close, "{:?} vs {:?}", after.features, b.features);
        (after.features, b.features) = (Vec::new(), Vec::new());
        assert_eq!(after, b, "rebuilt {} differs", b.incident_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_waits_for_a_qdrant_server_that_went_away_and_catches_up() {
    let Some(mut qdrant) = qdrant_server::QdrantProcess::start() else {
        return;
    };
    let (_server, js) = mapek_testkit::server_with_streams().await;
    let index: Arc<dyn IncidentIndex> = Arc::new(
        mapek_vectors::ServerIndex::connect(&qdrant.url(), "mapek_incidents")
            .await
            .unwrap(),
    );
    publish_closed(&js, "a", "n1", T0, ActionKind::Escalate, false).await;

    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(mapek_vectors::project_with(
        js.clone(),
        index.clone(),
        failures.clone(),
        mapek_bus::until_stopped(stopped),
    ));
    let reaches = |want: Offsets, within: Duration| {
        let index = index.clone();
        async move {
            tokio::time::timeout(within, async {
                while index.offsets().await.ok() != Some(want) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the index reaches {want:?} within {within:?}"));
        }
    };
    reaches(through(1), Duration::from_secs(20)).await;

    // The server goes away; incident b comes in meanwhile.
    qdrant.stop();
    publish_closed(
        &js,
        "b",
        "n2",
        T0 + 60_000,
        ActionKind::RestartService,
        true,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while failures.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the projection counts the failures while the server is away");
    assert!(
        !task.is_finished(),
        "the projection waits instead of failing"
    );

    // Back: the projection goes on from where it was.
    qdrant.restart();
    reaches(through(2), Duration::from_secs(30)).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert!(stats.failures > 0, "{stats:?}");
    assert_eq!(index.count().await.unwrap(), 2);
    let got_b = index.get("b").await.unwrap().unwrap();
    assert!(got_b.ready);
    assert_eq!(got_b.resolved, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_rides_through_a_restarted_nats_server() {
    let (mut server, js) = mapek_testkit::server_with_streams().await;
    let dir = tempfile::tempdir().unwrap();
    let index: Arc<dyn IncidentIndex> = Arc::new(EdgeIndex::open(&dir.path().join("i")).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(mapek_vectors::project_with(
        js.clone(),
        index.clone(),
        Arc::default(),
        mapek_bus::until_stopped(stopped),
    ));
    let reaches = async |want: Offsets| {
        tokio::time::timeout(Duration::from_secs(60), async {
            while index.offsets().await.unwrap() != want {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the projection catches up within 60 s");
    };
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        let at = T0 + i as i64 * 60_000;
        publish_closed(
            &js,
            &format!("i{i}"),
            node,
            at,
            ActionKind::RestartService,
            true,
        )
        .await;
    }
    reaches(through(3)).await;

    // The server is killed, stays away long enough for reads to fail, and comes back with its
    // store; the projection goes on from where it was.
    server.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while js.query_account().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "JetStream is back within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 3..5 {
        let at = T0 + i * 60_000;
        publish_closed(
            &js,
            &format!("i{i}"),
            "n4",
            at,
            ActionKind::Quarantine,
            false,
        )
        .await;
    }
    reaches(through(5)).await;
    assert!(!task.is_finished(), "the projection kept running");
    stop.send(()).unwrap();
    task.await.unwrap().expect("the projection ends cleanly");
    assert!(index.get("i4").await.unwrap().unwrap().ready);
}
