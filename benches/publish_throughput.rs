//! Publish throughput: `mapek_bus::Publisher` against raw async-nats JetStream publishing of the
//! same bytes to the same stream, in the same run.
//!
//! `cargo bench -p mapek --bench publish_throughput` (MAPEK_BENCH_EVENTS sets the count,
//! default 1 000 000). Each run starts from freshly created streams on a nats-server of its
//! own (from NATS_SERVER_BIN or PATH, store in a temporary directory). Both sides keep the same
//! window of acks in flight and send the same `Nats-Msg-Id` (the dedup key, which costs the
//! server work), so the ratio measures what the library adds: checking and encoding each event
//! and building its headers. Runs alternate, twice each, and the best of each is compared.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mapek_bus::{JetStream, Publisher};
use mapek_domain::{NodeId, Telemetry};
use mapek_testkit::NatsServer;

mod common;
use common::{RawMessage, encode_all, fresh_streams, raw_publish};

const WINDOW: usize = 1024;

fn events(n: usize) -> Vec<Telemetry> {
    let nodes: Vec<NodeId> = (0..1000)
        .map(|i| NodeId::new(format!("n{i}")).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let metrics = BTreeMap::from([
                ("latency_ms".to_owned(), (i % 97) as f64 + 0.5),
                ("loss".to_owned(), (i % 10) as f64 / 1000.0),
                ("cpu".to_owned(), (i % 100) as f64 / 100.0),
            ]);
            Telemetry::new(
                nodes[i % nodes.len()].clone(),
                1_795_867_200_000 + i as i64,
                metrics,
            )
        })
        .collect()
}

async fn library(js: &JetStream, events: &[Telemetry]) -> Duration {
    fresh_streams(js).await;
    let start = Instant::now();
    let mut publisher = Publisher::with_window(js.clone(), WINDOW);
    for e in events {
        publisher.publish(e).await.unwrap();
    }
    let report = publisher.finish().await;
    let elapsed = start.elapsed();
    assert!(
        report.all_acked() && report.acked == events.len() as u64,
        "{report:?}"
    );
    elapsed
}

/// Raw async-nats: pre-encoded bytes, the same subject and `Nats-Msg-Id`, the same window.
async fn raw(js: &JetStream, messages: &[RawMessage], msg_id: bool) -> Duration {
    fresh_streams(js).await;
    raw_publish(js, messages, msg_id, WINDOW).await
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("MAPEK_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = NatsServer::start();
        let js = mapek_bus::connect(&server.url()).await.unwrap();
        let events = events(n);
        let messages = encode_all(&events);
        let bytes: usize = messages.iter().map(|m| m.2.len()).sum();
        println!(
            "publish_throughput: {n} telemetry events, {:.0} B each on average, window {WINDOW}, \
             nats-server {} on the same machine",
            bytes as f64 / n as f64,
            server.url()
        );
        let mut best_raw = Duration::MAX;
        let mut best_lib = Duration::MAX;
        for round in 1..=2 {
            let r = raw(&js, &messages, true).await;
            let l = library(&js, &events).await;
            println!(
                "  round {round}: raw {:>9.0} events/s   library {:>9.0} events/s",
                rate(n, r),
                rate(n, l)
            );
            best_raw = best_raw.min(r);
            best_lib = best_lib.min(l);
        }
        let bare = raw(&js, &messages, false).await;
        println!(
            "raw async-nats JetStream publish (same bytes, same Nats-Msg-Id): {:.0} events/s",
            rate(n, best_raw)
        );
        println!(
            "mapek_bus::Publisher (check + Avro encode + headers + publish):  {:.0} events/s",
            rate(n, best_lib)
        );
        println!(
            "ratio library/raw: {:.2} (goal >= 0.80)",
            rate(n, best_lib) / rate(n, best_raw)
        );
        println!(
            "for reference, raw publish without any header (no dedup): {:.0} events/s",
            rate(n, bare)
        );
    });
}
