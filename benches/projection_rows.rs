//! Projection rows per second into Postgres: the decisions projection (JetStream → decode →
//! one transaction per batch with the offset) against a plain multi-row INSERT of the same
//! rows into the same table, in the same run; and the monitor projection's rate at 10 000
//! nodes into SQLite and into Postgres, against reading and decoding the same log.
//!
//! `cargo bench -p mapek-knowledge --bench projection_rows` (MAPEK_BENCH_ROWS sets the count
//! of decisions, default 50 000; MAPEK_BENCH_SAMPLES the telemetry samples, default 100 000;
//! MAPEK_BENCH_NODES the nodes they come from, default 10 000). Then the same mesh reports
//! live, MAPEK_BENCH_HZ times a second (default 5) for MAPEK_BENCH_SECONDS (default 10),
//! projected into Postgres as it comes, without and with the telemetry linger: the
//! transactions and Postgres's CPU per sample.
//! Needs nats-server 2.11+ (NATS_SERVER_BIN or PATH) and Postgres (DATABASE_URL, default
//! postgres://postgres@127.0.0.1:5432); each side writes into a fresh database of its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mapek_bus::{JetStream, Publisher};
use mapek_domain::{Decision, NodeId, Phase, Telemetry};
use mapek_knowledge::{ProjectionConfig, ProjectionStats, ReadModel, project_with};
use mapek_testkit::cpu::{cpu_of, cpu_since};
use mapek_testkit::samples::{TS_MS, decision};
use mapek_testkit::{NatsServer, TestDatabase};
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder};

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn decisions(n: usize) -> Vec<Decision> {
    (0..n)
        .map(|i| {
            let mut d = decision();
            d.decision_id = format!("d-{i:08}");
            d.symptom_id = format!("s-{i:08}");
            d.incident_id = format!("i-{:08}", i / 3);
            d.node = NodeId::new(format!("n{}", i % 1000)).unwrap();
            d.ts_ms = TS_MS + i as i64;
            d
        })
        .collect()
}

async fn publish<E: mapek_codec::AvroEvent>(js: &JetStream, events: &[E]) {
    let mut p = Publisher::new(js.clone());
    for e in events {
        p.publish(e).await.expect("publish");
    }
    let report = p.finish().await;
    assert_eq!(report.failed, 0, "{report:?}");
}

async fn fresh_model() -> (TestDatabase, ReadModel) {
    let db = TestDatabase::create().await;
    let model = ReadModel::connect(db.url()).await.expect("connect");
    model.migrate().await.expect("migrate");
    (db, model)
}

/// Projects every stream until caught up, writing at most `telemetry_batch` samples a
/// transaction; returns the seconds it took.
async fn project(
    js: &JetStream,
    model: &ReadModel,
    telemetry_batch: usize,
) -> (f64, ProjectionStats) {
    let stats = ProjectionStats::default();
    let config = ProjectionConfig {
        durable_prefix: None,
        until_caught_up: true,
        telemetry_batch,
        ..ProjectionConfig::default()
    };
    let start = Instant::now();
    project_with(
        js.clone(),
        model.clone(),
        None,
        config,
        stats.clone(),
        std::future::pending(),
    )
    .await
    .expect("project");
    (start.elapsed().as_secs_f64(), stats)
}

/// The same rows as the decisions projection writes, by plain multi-row INSERTs of 1 000.
async fn baseline(url: &str, events: &[Decision]) -> f64 {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let start = Instant::now();
    for (c, chunk) in events.chunks(1000).enumerate() {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO decisions (decision_id, symptom_id, incident_id, node, ts_ms, action, \
             peer, service, params, rule, reason, policy_name, policy_hash, knowledge, \
             stream_seq) ",
        );
        q.push_values(chunk.iter().enumerate(), |mut b, (i, d)| {
            let knowledge = serde_json::to_string(&d.knowledge).unwrap();
            b.push_bind(&d.decision_id)
                .push_bind(&d.symptom_id)
                .push_bind(&d.incident_id)
                .push_bind(d.node.as_str())
                .push_bind(d.ts_ms)
                .push_bind(d.action.kind.as_str())
                .push_bind(d.action.peer.as_ref().map(|p| p.as_str()))
                .push_bind(d.action.service.as_deref())
                .push_bind(serde_json::to_string(&d.action.params).unwrap())
                .push_bind(&d.rule)
                .push_bind(&d.reason)
                .push_bind(&d.policy_name)
                .push_bind(&d.policy_hash)
                .push_bind(knowledge)
                .push_bind((c * 1000 + i + 1) as i64);
        });
        q.build().execute(&mut conn).await.expect("insert");
    }
    start.elapsed().as_secs_f64()
}

/// The read model's own most telemetry samples a transaction.
fn default_telemetry_batch() -> usize {
    ProjectionConfig::default().telemetry_batch
}

#[tokio::main]
async fn main() {
    let rows = count("MAPEK_BENCH_ROWS", 50_000);
    let samples = count("MAPEK_BENCH_SAMPLES", 100_000);
    let server = NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.expect("connect");
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin())
        .await
        .expect("streams");

    let events = decisions(rows);
    publish(&js, &events).await;

    // Best of two runs each, alternating, every run into a fresh database.
    let (mut best_projection, mut best_baseline) = (f64::MAX, f64::MAX);
    for _ in 0..2 {
        let (_db, model) = fresh_model().await;
        let (secs, stats) = project(&js, &model, default_telemetry_batch()).await;
        assert_eq!(stats.phase(Phase::Plan).applied, rows as u64);
        best_projection = best_projection.min(secs);
        let (db, _model) = fresh_model().await;
        best_baseline = best_baseline.min(baseline(db.url(), &events).await);
    }
    let projected = rows as f64 / best_projection;
    let raw = rows as f64 / best_baseline;
    println!(
        "projection_rows: {rows} decisions from the log into Postgres in {best_projection:.2} s: \
         {projected:.0} rows/s"
    );
    println!(
        "baseline: the same {rows} rows by plain multi-row INSERT (1 000 a statement) in \
         {best_baseline:.2} s: {raw:.0} rows/s"
    );
    println!(
        "ratio: projection / plain INSERT = {:.2} (the projection also reads the log, decodes \
         Avro, and writes its offset in each transaction)",
        projected / raw
    );

    drop((js, server));
    let nodes = count("MAPEK_BENCH_NODES", 10_000);
    let telemetry = telemetry(samples, nodes);
    println!(
        "monitor: {samples} telemetry samples of {nodes} nodes, each store fresh, against \
         reading and decoding the same log through mapek's Subscriber, without writing:"
    );
    let sqlite = tempfile::tempdir().expect("a directory for SQLite");
    let sqlite = sqlite.path().join("knowledge.sqlite");
    monitor_rate("SQLite", sqlite.to_str().unwrap(), &telemetry, 50_000.0).await;
    let db = TestDatabase::create().await;
    monitor_rate("Postgres", db.url(), &telemetry, 100_000.0).await;

    let hz = count("MAPEK_BENCH_HZ", 5);
    let seconds = count("MAPEK_BENCH_SECONDS", 10);
    println!(
        "live: {nodes} nodes at {hz} Hz for {seconds} s into Postgres, projected as they \
         come, without and with the default linger:"
    );
    for linger in [Duration::ZERO, ProjectionConfig::default().telemetry_linger] {
        live_cost(nodes, hz, seconds, linger).await;
    }
}

/// Projects a mesh of `nodes` reporting `hz` times a second for `seconds` into a fresh
/// Postgres database as it comes, with telemetry batches lingering `linger`; prints the
/// transactions, Postgres's CPU per sample and how long after the last report the read
/// model had it. The server flushes as by default: the projection is measured, not it.
async fn live_cost(nodes: usize, hz: usize, seconds: usize, linger: Duration) {
    let server = NatsServer::start_unsynced();
    let js = mapek_bus::connect(&server.url()).await.expect("connect");
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin())
        .await
        .expect("streams");
    let (_db, model) = fresh_model().await;
    let stats = ProjectionStats::default();
    let config = ProjectionConfig {
        telemetry_linger: linger,
        ..ProjectionConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let live = tokio::spawn(project_with(
        js.clone(),
        model.clone(),
        None,
        config,
        stats.clone(),
        mapek_bus::until_stopped(stopped),
    ));
    let postgres = cpu_of("postgres");
    let rounds = hz * seconds;
    let started = Instant::now();
    for r in 0..rounds {
        let due = started + Duration::from_secs_f64(r as f64 / hz as f64);
        tokio::time::sleep_until(due.into()).await;
        let round: Vec<Telemetry> = telemetry(nodes, nodes)
            .into_iter()
            .map(|mut t| {
                t.ts_ms += (r * 1000 / hz) as i64;
                t.event_id = t.content_id();
                t
            })
            .collect();
        publish(&js, &round).await;
    }
    let published = Instant::now();
    let total = (rounds * nodes) as u64;
    while stats.phase(Phase::Monitor).applied < total {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lag = published.elapsed().as_secs_f64();
    let spent = cpu_since("postgres", &postgres);
    let _ = stop.send(());
    live.await.expect("join").expect("project");
    println!(
        "  linger {linger:>5?}: {} transactions for {total} samples; Postgres {:.2} µs CPU a \
         sample; the last report in the read model {lag:.2} s after it was stored",
        stats.phase(Phase::Monitor).batches,
        spent / total as f64 * 1e6
    );
}

/// `samples` telemetry samples of `nodes` nodes, a millisecond apart, round-robin.
fn telemetry(samples: usize, nodes: usize) -> Vec<Telemetry> {
    (0..samples)
        .map(|i| {
            let metrics = BTreeMap::from([
                ("latency_ms".to_owned(), (i % 97) as f64 + 0.5),
                ("cpu".to_owned(), (i % 100) as f64 / 100.0),
            ]);
            Telemetry::new(
                NodeId::new(format!("n{}", i % nodes)).unwrap(),
                TS_MS + i as i64,
                metrics,
            )
        })
        .collect()
}

/// The monitor projection's rate into the store at `url` (each batch keeps only each node's
/// latest sample), on a server of its own holding `telemetry` alone, against reading and
/// decoding the same log; with batches of at most 1 000 samples and of the default, each
/// into the emptied store; `goal` in samples/s.
async fn monitor_rate(store: &str, url: &str, telemetry: &[Telemetry], goal: f64) {
    let server = NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.expect("connect");
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin())
        .await
        .expect("streams");
    publish(&js, telemetry).await;
    let read = read_all(&js, telemetry.len()).await;
    let read_rate = telemetry.len() as f64 / read;
    let model = ReadModel::connect(url).await.expect("connect");
    model.migrate().await.expect("migrate");
    for batch in [1_000, default_telemetry_batch()] {
        model.reset().await.expect("empty the store");
        let (secs, stats) = project(&js, &model, batch).await;
        let applied = stats.phase(Phase::Monitor).applied;
        assert_eq!(applied, telemetry.len() as u64);
        let rate = applied as f64 / secs;
        println!(
            "  {store:<9} batches of {batch:>6}: {rate:>8.0} samples/s in {} transactions; \
             reading alone {read_rate:>8.0}/s; ratio {:.2}; goal >= {goal:.0}/s: {}",
            stats.phase(Phase::Monitor).batches,
            rate / read_rate,
            if rate >= goal { "met" } else { "not met" }
        );
    }
}

/// Reads and decodes the `n` telemetry samples stored; returns the seconds it took.
async fn read_all(js: &JetStream, n: usize) -> f64 {
    let start = Instant::now();
    let config = mapek_bus::SubscriberConfig::all();
    let mut sub = mapek_bus::Subscriber::<Telemetry>::open(js, config)
        .await
        .expect("subscribe");
    let mut seen = 0;
    while seen < n {
        let received = sub.next().await.expect("open").expect("read");
        received.event.expect("decodes");
        seen += 1;
    }
    start.elapsed().as_secs_f64()
}
