//! How fast the read model's telemetry projection drains a backlog into Postgres with one
//! `mapek run --phase project` process, and with two sharing the telemetry streams.
//!
//! `cargo bench -p mapek --bench projection_scale_out` stores a backlog of
//! MAPEK_BENCH_BACKLOG telemetry samples (default 3 000 000) of MAPEK_BENCH_NODES nodes
//! (default 10 000) in the shipped layout (two monitor streams, MAPEK_BENCH_MONITOR_STREAMS
//! to change), then, MAPEK_BENCH_ROUNDS times (default 3), projects it into a fresh Postgres
//! database with one release `mapek run --phase project` process and then with two. The
//! rate counted is the steady one: from when the telemetry leases are settled (both streams
//! held, by different processes when there are two) until every sample is in the read
//! model; the samples projected before that are left out. It prints each rate, the ratio
//! two/one of each round and their median, and the projectors' CPU per sample.
//!
//! The backlog is stored by a server with its default flushing: only reading it is measured.
//! The processes, nats-server and Postgres share the machine's cores.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use mapek_bus::JetStream;
use mapek_bus::progress::lease_owners;
use mapek_knowledge::ReadModel;
use mapek_testkit::cpu::{cpu_of, cpu_since};
use mapek_testkit::{NatsServer, TestDatabase};

mod common;

use common::{burst_events, cpu_seconds, encode_all, raw_publish, release_mapek};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `mapek run --phase project` as `name`, into the read model at `database`.
fn projector(url: &str, database: &str, data: &Path, name: &str) -> Child {
    release_mapek(url)
        .args(["run", "--phase", "project", "--worker", name])
        .args(["--metrics-addr", "off"])
        .env("DATABASE_URL", database)
        .env("MAPEK_DATA_DIR", data.join(name))
        .stderr(Stdio::null())
        .spawn()
        .expect("mapek run --phase project")
}

/// Samples in the read model: the monitor streams' stored sequences, summed.
async fn projected(model: &ReadModel) -> usize {
    let offsets = model.offsets().await.unwrap_or_default();
    offsets
        .iter()
        .filter(|(stream, _)| stream.starts_with("MAPEK_MONITOR"))
        .map(|(_, seq)| *seq as usize)
        .sum()
}

/// Whether each of the `streams` telemetry leases is held by one of `names`, and every one
/// of them holds some (as many as there are streams).
async fn settled(js: &JetStream, streams: usize, names: &[String]) -> bool {
    let owners = lease_owners(js).await;
    let mut holders: Vec<&String> = (0..streams)
        .filter_map(|i| owners.get(&format!("knowledge-sql-monitor.p{i}")))
        .filter(|h| names.contains(h))
        .collect();
    let all_held = holders.len() == streams;
    holders.sort();
    holders.dedup();
    all_held && holders.len() == names.len().min(streams)
}

/// One projection of the backlog by `processes` processes: the steady rate (samples/s) and
/// the CPU per sample, over the part after the leases settled.
async fn drain(
    server: &NatsServer,
    js: &JetStream,
    backlog: usize,
    streams: usize,
    processes: usize,
) -> (f64, Spent) {
    let url = server.url();
    let server_cpu = || cpu_seconds(&format!("/proc/{}/stat", server.pid().unwrap()));
    // The last run's leases outlive its processes by up to a lease period.
    let _ = js.delete_key_value(mapek_loop::lease::BUCKET).await;
    let db = TestDatabase::create().await;
    let data = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..processes).map(|i| format!("proj-{i}")).collect();
    let mut children: Vec<Child> = names
        .iter()
        .map(|name| projector(&url, db.url(), data.path(), name))
        .collect();
    let model = ReadModel::connect(db.url()).await.unwrap();
    let cpu = |children: &[Child]| -> f64 {
        children
            .iter()
            .map(|c| cpu_seconds(&format!("/proc/{}/stat", c.id())))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !settled(js, streams, &names).await {
        assert!(
            Instant::now() < deadline,
            "the leases did not settle in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (from, started, cpu0) = (projected(&model).await, Instant::now(), cpu(&children));
    let (postgres0, server0) = (cpu_of("postgres"), server_cpu());
    assert!(
        from < backlog / 2,
        "{from} of {backlog} projected before the leases settled: make the backlog bigger"
    );
    while projected(&model).await < backlog {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not drained in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (projectors, postgres) = (cpu(&children) - cpu0, cpu_since("postgres", &postgres0));
    let server = server_cpu() - server0;
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let samples = (backlog - from) as f64;
    let per = |seconds: f64| seconds / samples * 1e6;
    let spent = Spent {
        projectors: per(projectors),
        postgres: per(postgres),
        server: per(server),
    };
    (samples / elapsed, spent)
}

/// CPU per sample (µs) over a drain: the projectors, Postgres, nats-server.
#[derive(Clone, Copy)]
struct Spent {
    projectors: f64,
    postgres: f64,
    server: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let backlog = env_or("MAPEK_BENCH_BACKLOG", 3_000_000);
    let nodes = env_or("MAPEK_BENCH_NODES", 10_000);
    let streams = env_or("MAPEK_BENCH_MONITOR_STREAMS", 2);
    let rounds = env_or("MAPEK_BENCH_ROUNDS", 3);
    let server = NatsServer::start_unsynced();
    let url = server.url();
    let applied = release_mapek(&url)
        .args([
            "streams",
            "apply",
            "--monitor-streams",
            &streams.to_string(),
        ])
        .status()
        .expect("mapek streams apply");
    assert!(applied.success());
    let js = mapek_bus::connect(&url).await.unwrap();
    let messages = encode_all(&burst_events(nodes, backlog));
    let took = raw_publish(&js, &messages, true, 4096).await;
    drop(messages);
    println!(
        "backlog: {backlog} samples of {nodes} nodes in {streams} monitor streams, stored in {:.1} s",
        took.as_secs_f64()
    );
    println!(
        "round | one process: samples/s | two processes: samples/s | ratio two/one | CPU µs per \
         sample, one / two: projectors, Postgres, nats-server"
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let (one, a) = drain(&server, &js, backlog, streams, 1).await;
        let (two, b) = drain(&server, &js, backlog, streams, 2).await;
        ratios.push(two / one);
        println!(
            "{round} | {one:.0} | {two:.0} | {:.2} | {:.1} / {:.1}, {:.1} / {:.1}, {:.1} / {:.1}",
            two / one,
            a.projectors,
            b.projectors,
            a.postgres,
            b.postgres,
            a.server,
            b.server
        );
    }
    println!("median ratio two/one: {:.2}", median(ratios));
}
