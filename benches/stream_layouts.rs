//! Where nats-server's ceiling is when every event it stores is also read once, by stream
//! layout and by way of publishing.
//!
//! `cargo bench -p mapek --bench stream_layouts` (MAPEK_BENCH_BURST events per burst, default
//! 200 000; MAPEK_BENCH_ROUNDS rounds of every layout, default 2).
//!
//! For each layout, in the same run: raw async-nats JetStream publishing of a burst of
//! telemetry (the same bytes and `Nats-Msg-Id` as the loop bench's), nothing consuming; then
//! the same burst again with bare readers (take a batch, acknowledge its last, nothing else),
//! timed until they have acknowledged all of it. The ratio of the two is the most any loop
//! that reads what it stores could reach against the raw baseline in that layout.
//!
//! The layouts:
//! - `one stream`: `MAPEK_MONITOR` as `streams/` defines it (the subject transform into 8
//!   partitions) on a server without the telemetry mapping, a consumer per partition, as
//!   analyze reads it;
//! - `one stream, fast batch`: the same, published as one nats-server 2.14+ fast batch
//!   (ADR-50: the server acknowledges every up to 500 messages instead of each);
//! - `one stream, one reader`: the same stream, one unfiltered consumer;
//! - `one stream, no transform`: no subject transform, one unfiltered consumer;
//! - `N streams`: the node subjects split over N streams (explicit subject lists), one
//!   unfiltered consumer each.
//! - `mapped`: ADR 0012's layout, as shipped, on a second server whose account maps each
//!   node's subject to its partition: the 8 partitions over 1 or 2 streams, a consumer per
//!   partition.
//!
//! nats-server runs a stream's ingest, its publish acks and every delivery of its consumers on
//! one goroutine per stream: the layouts with more streams show what that costs on 2 cores.

use std::time::{Duration, Instant};

use async_nats::jetstream::stream::Config;
use mapek_bus::JetStream;
use mapek_testkit::NatsServer;
use tokio::sync::watch;

mod common;

use common::{
    RawMessage, as_nodes, bare_readers, burst_events, encode_all, fresh_streams, pull_readers,
};

/// The allocator of the `mapek` binary (ADR 0009).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How the burst is stored and read.
#[derive(Clone, Copy)]
enum Layout {
    /// `streams/`'s MAPEK_MONITOR on a server without the mapping, a consumer per partition;
    /// `fast` publishes one fast batch.
    Single { fast: bool },
    /// MAPEK_MONITOR (with or without its subject transform), one unfiltered consumer.
    OneReader { transform: bool },
    /// The node subjects split over this many streams, one unfiltered consumer each.
    Split(usize),
    /// ADR 0012's layout, on a server that maps `mapek.monitor.<node>` to its partition
    /// ([`mapek_domain::TELEMETRY_MAPPING`]): the 8 partitions over this many streams, a
    /// consumer per partition.
    Mapped(usize),
}

impl Layout {
    fn label(self) -> String {
        match self {
            Layout::Single { fast: false } => "one stream (8 partitions, 8 readers)".into(),
            Layout::Single { fast: true } => "one stream, published as a fast batch".into(),
            Layout::OneReader { transform: true } => "one stream, one reader".into(),
            Layout::OneReader { transform: false } => "one stream, no transform".into(),
            Layout::Split(n) => format!("{n} streams, a reader each"),
            Layout::Mapped(2) => "mapped over 2 streams (as shipped)".into(),
            Layout::Mapped(n) => format!("mapped, 8 partitions over {n} stream(s)"),
        }
    }

    /// Makes the streams empty, as the layout wants them; returns (stream, filters) per
    /// stream to read.
    async fn fresh(self, js: &JetStream, subjects: &[String]) -> Vec<(String, Vec<String>)> {
        for i in 0..16 {
            let _ = js.delete_stream(format!("LAYOUT_{i}")).await;
        }
        fresh_streams(js).await;
        let partitions: Vec<String> = (0..8).map(|p| format!("mapek.monitor.{p}.>")).collect();
        match self {
            Layout::Single { fast } => {
                if fast {
                    common::allow_batched(js).await;
                }
                vec![("MAPEK_MONITOR".into(), partitions)]
            }
            Layout::OneReader { transform } => {
                if !transform {
                    let mut stream = js.get_stream("MAPEK_MONITOR").await.unwrap();
                    let mut config = stream.info().await.unwrap().config.clone();
                    config.subject_transform = None;
                    js.delete_stream("MAPEK_MONITOR").await.unwrap();
                    js.create_stream(config).await.unwrap();
                }
                vec![("MAPEK_MONITOR".into(), vec![String::new()])]
            }
            Layout::Split(n) => {
                js.delete_stream("MAPEK_MONITOR").await.unwrap();
                let mut streams = Vec::new();
                for i in 0..n {
                    let name = format!("LAYOUT_{i}");
                    js.create_stream(Config {
                        name: name.clone(),
                        subjects: subjects.iter().skip(i).step_by(n).cloned().collect(),
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                    streams.push((name, vec![String::new()]));
                }
                streams
            }
            Layout::Mapped(n) => {
                for i in 0..8 {
                    let _ = js.delete_stream(mapek_bus::layout::monitor_stream(i)).await;
                }
                let mut streams = Vec::new();
                for i in 0..n {
                    let name = format!("LAYOUT_{i}");
                    let mine: Vec<usize> = (i..8).step_by(n).collect();
                    js.create_stream(Config {
                        name: name.clone(),
                        subjects: mine
                            .iter()
                            .map(|p| format!("mapek.monitor.{p}.*"))
                            .collect(),
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                    let filters = mine
                        .iter()
                        .map(|p| format!("mapek.monitor.{p}.>"))
                        .collect();
                    streams.push((name, filters));
                }
                streams
            }
        }
    }

    async fn publish(self, url: &str, messages: &[RawMessage]) -> Duration {
        let messages = messages.to_vec();
        let fast = matches!(self, Layout::Single { fast: true });
        as_nodes(url, move |js| async move {
            if fast {
                common::fast_publish(&js, &messages, 500).await
            } else {
                common::raw_publish(&js, &messages, true, mapek_bus::publisher::DEFAULT_WINDOW)
                    .await
            }
        })
        .await
    }
}

/// Messages the readers of `streams` have yet to take.
async fn backlog(js: &JetStream, streams: &[(String, Vec<String>)]) -> u64 {
    let mut total = 0;
    for (name, filters) in streams {
        let stream = js.get_stream(name).await.unwrap();
        for p in 0..filters.len() {
            let info = stream.consumer_info(format!("bare-p{p}")).await.unwrap();
            total += info.num_pending + info.num_ack_pending as u64;
        }
    }
    total
}

/// Events per second: publishing alone, and publishing with bare readers until they have
/// taken everything.
async fn measure(
    js: &JetStream,
    url: &str,
    layout: Layout,
    messages: &[RawMessage],
    subjects: &[String],
) -> (f64, f64) {
    let n = messages.len() as f64;
    layout.fresh(js, subjects).await;
    let alone = n / layout.publish(url, messages).await.as_secs_f64();

    let streams = layout.fresh(js, subjects).await;
    let mut pulls = Vec::new();
    for (name, filters) in &streams {
        pulls.extend(pull_readers(js, name, "bare", filters).await);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers = bare_readers(pulls, &stop_rx);
    let start = Instant::now();
    layout.publish(url, messages).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while backlog(js, &streams).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = n / start.elapsed().as_secs_f64();
    stop_tx.send(true).unwrap();
    for r in readers {
        r.await.unwrap();
    }
    (alone, read)
}

fn main() {
    let burst = env("MAPEK_BENCH_BURST", 200_000);
    let rounds = env("MAPEK_BENCH_ROUNDS", 2);
    let messages = encode_all(&burst_events(env("MAPEK_BENCH_NODES", 1000), burst));
    let mut subjects: Vec<String> = messages.iter().map(|m| m.0.clone()).collect();
    subjects.sort();
    subjects.dedup();
    let layouts = [
        Layout::Single { fast: false },
        Layout::Single { fast: true },
        Layout::OneReader { transform: true },
        Layout::OneReader { transform: false },
        Layout::Split(2),
        Layout::Split(4),
        Layout::Split(8),
    ];
    let mapped = [Layout::Mapped(1), Layout::Mapped(2)];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = NatsServer::start_without_mapping();
        let js = mapek_bus::connect(&server.url()).await.unwrap();
        println!(
            "stream_layouts: nats-server, publisher and readers on the same 2-core machine; \
             bursts of {burst} telemetry events from {} nodes",
            subjects.len()
        );
        println!(
            "{:<38} {:>14} {:>20} {:>6}",
            "layout", "publish alone", "with bare readers", "ratio"
        );
        // A second server, with the mapping: it changes every monitor subject it takes.
        let mapping = NatsServer::start();
        let mapping_js = mapek_bus::connect(&mapping.url()).await.unwrap();
        for _ in 0..rounds {
            let runs = layouts
                .iter()
                .map(|l| (l, &js, &server))
                .chain(mapped.iter().map(|l| (l, &mapping_js, &mapping)));
            for (layout, js, server) in runs {
                let (alone, read) = measure(js, &server.url(), *layout, &messages, &subjects).await;
                println!(
                    "{:<38} {alone:>10.0} ev/s {read:>16.0} ev/s {:>6.2}",
                    layout.label(),
                    read / alone
                );
            }
        }
    });
}
