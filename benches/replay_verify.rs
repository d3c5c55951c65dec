//! `mapek replay verify` throughput: telemetry events per second replayed through the
//! analyzers (decode, step, compare), against reading the same stream raw with an ordered
//! consumer per monitor stream in the same run.
//!
//! `cargo bench -p mapek-replay --bench replay_verify`   (MAPEK_BENCH_EVENTS=1000000 default)
//!
//! Declared in mapek-replay rather than mapek so that it builds without the knowledge stores.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use mapek_bus::{JetStream, layout};
use mapek_domain::{Phase, Telemetry};
use mapek_replay::{Range, Source};
use mapek_sim::{Mesh, MeshConfig, default_script};
use mapek_testkit::NatsServer;

const T0: i64 = 1_795_867_200_000;

/// Telemetry of a 1 000-node simulated mesh with the demo's faults, `n` events.
fn telemetry(n: usize) -> Vec<Telemetry> {
    let nodes = 1000;
    let mut mesh = Mesh::new(
        MeshConfig {
            nodes,
            ..MeshConfig::default()
        },
        1,
    )
    .unwrap()
    .with_faults(&default_script(nodes))
    .unwrap();
    let mut out = Vec::with_capacity(n);
    let mut tick = 0;
    while out.len() < n {
        out.extend(mesh.tick(T0 + tick * 100));
        tick += 1;
    }
    out.truncate(n);
    out
}

/// Publishes `events` as a node agent would (Avro, `Nats-Msg-Id`), 1 024 acks in flight.
async fn store(js: &JetStream, events: Vec<Telemetry>) -> Duration {
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(1024);
    for e in &events {
        if in_flight.len() >= 1024 {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                in_flight.pop_front().unwrap();
            ack.await.unwrap();
        }
        let mut h = async_nats::HeaderMap::new();
        h.insert(mapek_bus::headers::MSG_ID, e.event_id.as_str());
        let body = bytes::Bytes::from(mapek_codec::encode(e).unwrap());
        let ack = js
            .publish_with_headers(format!("mapek.monitor.{}", e.node), h, body)
            .await
            .unwrap();
        in_flight.push_back(ack);
    }
    for ack in in_flight {
        ack.await.unwrap();
    }
    start.elapsed()
}

/// Reads all of the telemetry through a raw ordered consumer per monitor stream, one stream
/// after the other; how long it took.
async fn raw_read(js: &JetStream, expected: u64) -> Duration {
    let start = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    for stored in layout::streams_of(js, Phase::Monitor).await.unwrap() {
        let mut stream = js.get_stream(&stored.name).await.unwrap();
        let held = stream.info().await.unwrap().state.messages;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: "mapek.monitor.>".into(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut read = 0u64;
        while read < held {
            let m = messages.next().await.unwrap().unwrap();
            bytes += m.payload.len();
            read += 1;
        }
        n += read;
    }
    assert_eq!(n, expected);
    assert!(bytes > 0);
    start.elapsed()
}

async fn verify(js: &JetStream, expected: u64) -> Duration {
    let start = Instant::now();
    let report = mapek_replay::verify(&Source::live(js.clone()), Range::ALL, None)
        .await
        .unwrap();
    assert_eq!(report.telemetry, expected);
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("MAPEK_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let server = NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin())
        .await
        .unwrap();
    let took = store(&js, telemetry(n)).await;
    eprintln!("stored {n} telemetry events in {took:.1?}");

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (mut best_raw, mut best_verify) = (0f64, 0f64);
    for round in 1..=2 {
        let raw = rate(raw_read(&js, n as u64).await);
        let ver = rate(verify(&js, n as u64).await);
        println!("round {round}: raw {raw:>9.0} events/s   replay verify {ver:>9.0} events/s");
        best_raw = best_raw.max(raw);
        best_verify = best_verify.max(ver);
    }
    println!("raw ordered consumer read of the monitor streams: {best_raw:.0} events/s");
    println!("mapek replay verify (read + decode + analyze + compare): {best_verify:.0} events/s");
    println!(
        "ratio verify/raw: {:.2} (goal >= 0.50)",
        best_verify / best_raw
    );
}
