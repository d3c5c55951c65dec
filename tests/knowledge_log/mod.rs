//! What the knowledge tests share: a small scripted run of the loop, published to the log,
//! and the read model's stores for a test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use mapek_bus::{JetStream, Publisher};
use mapek_domain::{
    ActionKind, ActionResult, ActionStatus, Decision, LinkSample, Neighbour, Outcome,
    OutcomeResult, Symptom, SymptomKind, SymptomState, Telemetry,
};
use mapek_knowledge::{ProjectionConfig, ProjectionStats, ReadModel, project_with};
use mapek_testkit::samples::{self, TS_MS, node};

/// Telemetry with these metrics and, optionally, one link down.
pub fn telemetry(n: &str, ts_ms: i64, cpu: f64, link_down_to: Option<&str>) -> Telemetry {
    let metrics = BTreeMap::from([
        ("cpu".to_owned(), cpu),
        ("latency_ms".to_owned(), 10.0),
        ("loss".to_owned(), 0.0),
    ]);
    let mut t = Telemetry::new(node(n), ts_ms, metrics);
    if let Some(peer) = link_down_to {
        t.links = vec![LinkSample {
            peer: node(peer),
            up: false,
            latency_ms: 0.0,
            loss: 1.0,
        }];
        t.event_id = t.content_id();
    }
    t
}

fn symptom(id: &str, incident: &str, n: &str, ts: i64, state: SymptomState, sev: f64) -> Symptom {
    let mut s = samples::symptom();
    s.symptom_id = id.into();
    s.incident_id = incident.into();
    s.node = node(n);
    s.ts_ms = ts;
    s.state = state;
    s.severity = sev;
    s.summary = format!("{id} at severity {sev}");
    s
}

/// What the scripted run publishes, so tests can check the rows against it.
pub struct Script {
    /// Telemetry samples published (one of them a JSON body).
    pub telemetry: usize,
    /// Undecodable messages put on the plan stream.
    pub garbage: usize,
}

/// Publishes a small run of the loop: three nodes reporting (n2 with a hot CPU, n3 silent
/// since early on), a packet-loss incident on n1 that is rerouted and resolved, a CPU
/// incident on n2 whose rate limit is refused and stays open, and one message on the plan
/// subjects that does not decode.
pub async fn publish_scripted_run(js: &JetStream) -> Script {
    let mut p = Publisher::new(js.clone());
    let mut telemetry = 0;
    for i in 0..20 {
        let ts = TS_MS + i * 1000;
        p.publish(&telemetry_at("n1", ts, 0.30 + i as f64 / 100.0, None))
            .await
            .unwrap();
        p.publish(&telemetry_at("n2", ts, 0.97, None))
            .await
            .unwrap();
        telemetry += 2;
        if i < 3 {
            p.publish(&telemetry_at("n3", ts, 0.20, Some("n1")))
                .await
                .unwrap();
            telemetry += 1;
        }
    }
    // An older sample of n1 after its newest: the newest stays.
    p.publish(&telemetry_at("n1", TS_MS, 0.99, None))
        .await
        .unwrap();
    telemetry += 1;

    let a = "inc-a";
    let b = "inc-b";
    let mut sa = symptom("s-a1", a, "n1", TS_MS + 2_000, SymptomState::Open, 1.5);
    sa.kind = SymptomKind::PacketLoss;
    sa.peer = Some(node("n2"));
    let mut sa2 = sa.clone();
    sa2.symptom_id = "s-a2".into();
    sa2.ts_ms = TS_MS + 3_000;
    sa2.state = SymptomState::Update;
    sa2.severity = 2.5;
    let mut sa3 = sa.clone();
    sa3.symptom_id = "s-a3".into();
    sa3.ts_ms = TS_MS + 9_000;
    sa3.state = SymptomState::Resolve;
    sa3.severity = 0.5;
    sa3.summary = "loss back under threshold".into();
    let mut sb = symptom("s-b1", b, "n2", TS_MS + 4_000, SymptomState::Open, 1.1);
    sb.kind = SymptomKind::CpuSaturation;
    sb.peer = None;
    for s in [&sa, &sa2, &sb, &sa3] {
        p.publish(s).await.unwrap();
    }

    let mut da = samples::decision();
    da.decision_id = "d-a".into();
    da.symptom_id = "s-a1".into();
    da.incident_id = a.into();
    da.ts_ms = TS_MS + 2_000;
    let mut db = samples::decision();
    db.decision_id = "d-b".into();
    db.symptom_id = "s-b1".into();
    db.incident_id = b.into();
    db.node = node("n2");
    db.ts_ms = TS_MS + 4_000;
    db.action.kind = ActionKind::RateLimit;
    db.action.peer = None;
    db.rule = "cpu-saturated".into();
    db.knowledge = vec![
        Neighbour {
            incident_id: "old-1".into(),
            score: 0.8,
            action: ActionKind::RateLimit,
            resolved: true,
        },
        Neighbour {
            incident_id: "old-2".into(),
            score: 0.5,
            action: ActionKind::RestartService,
            resolved: false,
        },
    ];
    p.publish(&da).await.unwrap();
    p.publish(&db).await.unwrap();

    let mut ra: ActionResult = samples::action_result();
    ra.result_id = "r-a".into();
    ra.decision_id = "d-a".into();
    ra.incident_id = a.into();
    ra.ts_ms = TS_MS + 2_100;
    let mut rb = samples::action_result();
    rb.result_id = "r-b".into();
    rb.decision_id = "d-b".into();
    rb.incident_id = b.into();
    rb.node = node("n2");
    rb.ts_ms = TS_MS + 4_100;
    rb.action = db.action.clone();
    rb.status = ActionStatus::Refused;
    rb.reason = "cooldown: n2 was acted on 10 s ago".into();
    rb.attempts = 0;
    rb.dry_run = true;
    rb.escalation = Some([("team".to_owned(), "netops".to_owned())].into());
    p.publish(&ra).await.unwrap();
    p.publish(&rb).await.unwrap();

    let mut oa: Outcome = samples::outcome();
    oa.outcome_id = "o-a".into();
    oa.decision_id = "d-a".into();
    oa.incident_id = a.into();
    oa.ts_ms = TS_MS + 9_000;
    oa.result = OutcomeResult::Resolved;
    oa.recovery_ms = Some(7_000);
    p.publish(&oa).await.unwrap();
    let report = p.finish().await;
    assert_eq!(report.failed, 0, "the scripted run is stored: {report:?}");

    js.publish("mapek.plan.n1", "not avro at all".into())
        .await
        .unwrap()
        .await
        .unwrap();
    Script {
        telemetry,
        garbage: 1,
    }
}

fn telemetry_at(n: &str, ts: i64, cpu: f64, down: Option<&str>) -> Telemetry {
    telemetry(n, ts, cpu, down)
}

/// Projects every stream into `model` until each is caught up.
pub async fn project_all(js: &JetStream, model: &ReadModel) -> ProjectionStats {
    let stats = ProjectionStats::default();
    let config = ProjectionConfig {
        until_caught_up: true,
        ..ProjectionConfig::default()
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        project_with(
            js.clone(),
            model.clone(),
            None,
            config,
            stats.clone(),
            std::future::pending(),
        ),
    )
    .await
    .expect("the projection catches up within 60 s")
    .expect("the projection runs");
    stats
}

/// Keeps `_` imports that only some tests use from warning.
pub fn _unused(_: Decision) {}

/// Publishes samples `from..from + count`, a tenth of a second apart, from `nodes` nodes in
/// turn (`n0`, `n1`, …).
pub async fn publish_samples(js: &JetStream, from: i64, count: i64, nodes: i64) {
    let mut p = Publisher::new(js.clone());
    for i in from..from + count {
        let node = format!("n{}", i % nodes);
        p.publish(&telemetry(&node, TS_MS + i * 100, 0.5, None))
            .await
            .unwrap();
    }
    assert_eq!(p.finish().await.failed, 0);
}

/// Checks that `model` holds exactly the rows a rebuild of the whole log into a fresh database
/// gives: no gap and no double.
pub async fn assert_same_as_rebuild(js: &JetStream, model: &ReadModel) {
    let fresh = mapek_testkit::TestDatabase::create().await;
    let rebuilt = ReadModel::connect(fresh.url()).await.unwrap();
    rebuilt.migrate().await.unwrap();
    mapek_knowledge::rebuild(js, &rebuilt).await.unwrap();
    assert_eq!(
        model.snapshot().await.unwrap(),
        rebuilt.snapshot().await.unwrap(),
        "the read model and a rebuild from the log differ"
    );
}

/// A fresh read model in Postgres, and its projection running until `stop` is sent.
pub struct Projecting {
    /// The database, dropped with it.
    pub db: mapek_testkit::TestDatabase,
    /// The read model in it.
    pub model: ReadModel,
    /// The projection's counters.
    pub stats: ProjectionStats,
    /// Stops the projection.
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// The projection.
    pub task: tokio::task::JoinHandle<Result<(), mapek_knowledge::KnowledgeError>>,
}

/// Starts projecting the log live into a fresh Postgres read model with `config`.
pub async fn projecting(js: &JetStream, config: ProjectionConfig) -> Projecting {
    let db = mapek_testkit::TestDatabase::create().await;
    let model = ReadModel::connect(db.url()).await.unwrap();
    model.migrate().await.unwrap();
    let stats = ProjectionStats::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(project_with(
        js.clone(),
        model.clone(),
        None,
        config,
        stats.clone(),
        mapek_bus::until_stopped(stopped),
    ));
    Projecting {
        db,
        model,
        stats,
        stop,
        task,
    }
}
