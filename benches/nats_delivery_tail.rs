//! The delivery tail of nats-server itself, with Go's default garbage collector and with the
//! one mapek starts its servers with (ADR 0010).
//!
//! `cargo bench -p mapek --bench nats_delivery_tail` (MAPEK_BENCH_SECONDS sets each run's
//! length, default 30).
//!
//! No mapek worker runs: 1 000 simulated nodes publish their telemetry at 10 Hz (the loop
//! bench's load, the same encoded bytes and `Nats-Msg-Id`s, from a thread and a runtime of
//! their own) into the monitor streams (split by the server's mapping, as shipped), and
//! eight plain async-nats pull consumers, one per partition, read it as the analyze workers
//! would. For every message: the time from the moment the server stored it to the moment a
//! consumer received it. Run twice in the same process, each on a fresh server: first with
//! Go's defaults (`GOGC=100`, no memory limit), the baseline, then with mapek's (`GOGC=off`,
//! `GOMEMLIMIT=1GiB`). A "stall" is a moment where a message waited more than 5 ms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use mapek_bus::{JetStream, headers};
use mapek_sim::{Mesh, MeshConfig};
use mapek_testkit::NatsServer;

mod common;

use common::{as_nodes, encode_all, fresh_streams, partition_readers};

const NODES: usize = 1000;
const HZ: u64 = 10;

/// (seconds since the run started, microseconds from stored to received) of every message.
type Waits = Arc<Mutex<Vec<(f64, i64)>>>;

fn seconds() -> u64 {
    std::env::var("MAPEK_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// Eight readers, one per partition, as the analyze workers read.
async fn start_readers(js: &JetStream, started: Instant) -> Waits {
    let waits = Waits::default();
    for mut messages in partition_readers(js, "tail").await {
        let waits = waits.clone();
        tokio::spawn(async move {
            let mut taken = 0u64;
            while let Some(Ok(m)) = messages.next().await {
                let info = m.info().unwrap();
                let waited = time::OffsetDateTime::now_utc() - info.published;
                let us = (waited.as_seconds_f64() * 1e6) as i64;
                let pending = info.pending;
                waits
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), us));
                taken += 1;
                if pending == 0 || taken.is_multiple_of(64) {
                    m.ack().await.unwrap();
                }
            }
        });
    }
    waits
}

/// Publishes the mesh's telemetry at 10 Hz for `secs`, each tick's samples spread over the
/// tick a millisecond at a time (run by [`as_nodes`]: a thread, a runtime and a connection
/// of the nodes' own).
async fn publish_mesh(nodes_js: JetStream, secs: u64) -> u64 {
    let mut mesh = Mesh::new(
        MeshConfig {
            nodes: NODES,
            ..MeshConfig::default()
        },
        7,
    )
    .unwrap();
    let mut slice = tokio::time::interval(Duration::from_millis(1));
    let mut acks = std::collections::VecDeque::new();
    let mut published = 0;
    for tick in 0..secs * HZ {
        let batch = encode_all(&mesh.tick(1_795_867_200_000 + tick as i64 * 100));
        for chunk in batch.chunks(NODES / 100) {
            slice.tick().await;
            for (subject, id, payload) in chunk {
                let mut h = HeaderMap::new();
                h.insert(headers::MSG_ID, id.as_str());
                let ack = nodes_js
                    .publish_with_headers(subject.clone(), h, payload.clone())
                    .await
                    .unwrap();
                acks.push_back(ack);
                published += 1;
                while acks.len() > 512 {
                    acks.pop_front().unwrap().await.unwrap();
                }
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    published
}

/// The waits' p50, p99, p99.9 and maximum in ms.
struct Tail {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    stalls: usize,
}

fn tail(mut waits: Vec<(f64, i64)>) -> Tail {
    waits.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Moments, 50 ms apart at least, when a message had waited more than 5 ms.
    let mut stalls = 0;
    let mut last = f64::NEG_INFINITY;
    for (at, us) in &waits {
        if *us > 5_000 && at - last > 0.05 {
            stalls += 1;
            last = *at;
        }
    }
    let mut us: Vec<i64> = waits.iter().map(|w| w.1).collect();
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Tail {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
        stalls,
    }
}

async fn run(label: &str, env: &[(&str, &str)], secs: u64) -> Tail {
    let server = NatsServer::start_with_env("", env);
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    fresh_streams(&js).await;
    let started = Instant::now();
    let waits = start_readers(&js, started).await;
    let published = as_nodes(&server.url(), move |nodes_js| publish_mesh(nodes_js, secs)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (waits.lock().unwrap().len() as u64) < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waits = std::mem::take(&mut *waits.lock().unwrap());
    assert_eq!(waits.len() as u64, published, "every message is delivered");
    let t = tail(waits);
    println!(
        "   {label:<44} p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} stalls over 5 ms",
        t.p50, t.p99, t.p999, t.max, t.stalls
    );
    t
}

fn main() {
    let secs = seconds();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        println!(
            "nats_delivery_tail: nats-server and the bench on the same 2-core machine; {NODES} \
             nodes at {HZ} Hz for {secs} s, stored -> received by a partition's pull consumer:"
        );
        let go = run(
            "Go's default collector (GOGC=100):",
            &[("GOGC", "100"), ("GOMEMLIMIT", "off")],
            secs,
        )
        .await;
        let mapek = run("mapek's (GOGC=off, GOMEMLIMIT=1GiB):", &[], secs).await;
        println!(
            "   ratio mapek/default: p99 {:.2}, p99.9 {:.2}, max {:.2}",
            mapek.p99 / go.p99,
            mapek.p999 / go.p999,
            mapek.max / go.max
        );
    });
}
