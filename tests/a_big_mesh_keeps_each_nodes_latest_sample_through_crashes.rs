//! A mesh of 1 500 nodes reports in turn, twice each, and a tenth of the nodes send an old
//! sample late. The telemetry projection, into SQLite and into Postgres, writes batches of
//! 1 000 samples that each hold several samples of some nodes and more rows than one
//! statement takes; it crashes after its first commit on each telemetry stream and is
//! started again. Each node ends with its latest sample, every sample counts once, and both
//! stores hold the same rows.

mod knowledge_log;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use knowledge_log::telemetry;
use mapek_bus::{JetStream, Publisher, layout};
use mapek_domain::{Phase, Telemetry};
use mapek_knowledge::{
    Backend, CrashHook, KnowledgeError, ProjectionConfig, ProjectionStats, ReadModel, project_with,
};
use mapek_testkit::TestDatabase;
use mapek_testkit::samples::TS_MS;
use mapek_testkit::server_with_streams;

const NODES: i64 = 1_500;

/// Two rounds of the mesh in turn, then an older sample of every seventh node.
fn mesh() -> Vec<Telemetry> {
    let mut all: Vec<Telemetry> = (0..2 * NODES)
        .map(|i| {
            let cpu = (i % 1000) as f64 / 1000.0;
            telemetry(&format!("n{}", i % NODES), TS_MS + i * 10, cpu, None)
        })
        .collect();
    for k in (0..NODES).step_by(7) {
        all.push(telemetry(&format!("n{k}"), TS_MS + k * 10 - 5, 0.999, None));
    }
    all
}

/// Each node's sample with the greatest time, as `node|ts_ms|cpu|event_id` (the float as a
/// snapshot writes it).
fn latest(mesh: &[Telemetry]) -> Vec<String> {
    let mut latest: BTreeMap<&str, &Telemetry> = BTreeMap::new();
    for t in mesh {
        let slot = latest.entry(t.node.as_str()).or_insert(t);
        if t.ts_ms >= slot.ts_ms {
            *slot = t;
        }
    }
    latest
        .values()
        .map(|t| {
            format!(
                "{}|{}|{:?}|{}",
                t.node, t.ts_ms, t.metrics["cpu"], t.event_id
            )
        })
        .collect()
}

/// The rows of `table` in a [`ReadModel::snapshot`], only these columns, joined by `|`.
fn table(snapshot: &[String], table: &str, columns: &[usize]) -> Vec<String> {
    let prefix = format!("{table}: ");
    snapshot
        .iter()
        .filter_map(|row| row.strip_prefix(&prefix))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let picked: Vec<&str> = columns.iter().map(|c| cells[*c]).collect();
            picked.join("|")
        })
        .collect()
}

/// Projects every stream into `model` until caught up, crashing once after the first commit
/// on each telemetry stream; returns the streams that crashed. (Two that crash in the same
/// run stop it once.)
async fn project_through_crashes(js: &JetStream, model: &ReadModel) -> BTreeSet<String> {
    let crashed: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let seen = crashed.clone();
    let hook: CrashHook = Arc::new(move |stream, _| seen.lock().unwrap().insert(stream.into()));
    let mut crashes = 0;
    loop {
        let config = ProjectionConfig {
            until_caught_up: true,
            telemetry_batch: 1_000,
            crash_after_commit: Some(hook.clone()),
            ..ProjectionConfig::default()
        };
        let run = project_with(
            js.clone(),
            model.clone(),
            None,
            config,
            ProjectionStats::default(),
            std::future::pending(),
        );
        match tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the projection catches up within 60 s")
        {
            Ok(()) => return crashed.lock().unwrap().clone(),
            Err(KnowledgeError::Crashed { stream, seq }) => {
                crashes += 1;
                let stored = model.offsets().await.unwrap();
                assert!(
                    stored.contains(&(stream.clone(), seq)),
                    "{stream} committed {seq} before it crashed: {stored:?}"
                );
            }
            Err(e) => panic!("the projection failed: {e}"),
        }
        assert!(crashes < 10, "the projection keeps crashing");
    }
}

#[tokio::test]
async fn each_node_keeps_its_latest_sample_in_sqlite_and_postgres_through_crashes() {
    let (_server, js) = server_with_streams().await;
    let mesh = mesh();
    let mut p = Publisher::new(js.clone());
    for t in &mesh {
        p.publish(t).await.unwrap();
    }
    assert_eq!(p.finish().await.failed, 0);
    let (mut streams, mut names) = (Vec::new(), BTreeSet::new());
    for stored in layout::streams_of(&js, Phase::Monitor).await.unwrap() {
        let mut stream = js.get_stream(&stored.name).await.unwrap();
        let held = stream.info().await.unwrap().state.messages;
        assert!(
            held > 1_000,
            "{} holds more than a batch of 1 000: {held}",
            stored.name
        );
        streams.push(format!("{}|{held}|{held}|0", stored.name));
        names.insert(stored.name);
    }
    assert_eq!(streams.len(), 2, "telemetry in two streams: {streams:?}");

    let db = TestDatabase::create().await;
    let pg = ReadModel::connect(db.url()).await.unwrap();
    assert_eq!(pg.backend(), Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let lite = ReadModel::connect(dir.path().join("knowledge.sqlite").to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(lite.backend(), Backend::Sqlite);

    let want = latest(&mesh);
    assert_eq!(want.len(), NODES as usize);
    for model in [&pg, &lite] {
        let which = model.url();
        model.migrate().await.unwrap();
        let crashed = project_through_crashes(&js, model).await;
        assert_eq!(
            crashed, names,
            "a crash on each telemetry stream in {which}"
        );
        let snapshot = model.snapshot().await.unwrap();
        assert_eq!(
            table(&snapshot, "nodes", &[0, 1, 3, 10]),
            want,
            "each node's latest sample in {which}"
        );
        // Every sample applied once: the offsets count each stream's messages, no more.
        let offsets = table(&snapshot, "projection_offsets", &[0, 1, 2, 3]);
        let monitor: Vec<String> = offsets
            .into_iter()
            .filter(|row| row.starts_with("MAPEK_MONITOR"))
            .collect();
        assert_eq!(monitor, streams, "telemetry offsets in {which}");
    }
    assert_eq!(
        pg.snapshot().await.unwrap(),
        lite.snapshot().await.unwrap(),
        "Postgres and SQLite hold the same read model"
    );
}
