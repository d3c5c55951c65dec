//! What keeping a node's order across a grown partition count costs a partition's reader at
//! its start (ADR 0024).
//!
//! `cargo bench -p mapek --bench order_wait` (MAPEK_BENCH_ROUNDS rounds, default 3).
//!
//! One nats-server mapping telemetry into 8 partitions over two monitor streams, as shipped
//! (`sync_interval: always`). A burst of 20 000 samples of 1 000 nodes is stored and read to
//! the end by the analyze readers of the 8 partitions (`analyze-p0` … `analyze-p7`, bare:
//! a batch taken, its last acknowledged). The streams then grow to 32 partitions, the server's
//! mapping after them, and one more round of the mesh's samples is stored: each of the 24 new
//! partitions (8 to 31) has its first input, and descends from one of the 8, whose readers
//! read what the round brought them as well.
//!
//! Each round, for each of the 24 new partitions, in the same run:
//! - **start** (the raw baseline): what its reader does at any start: open its inbox (a
//!   durable consumer on its partition, as `mapek run` opens it) and take the first batch;
//! - **order wait**: what it does more, once, on a grown count: look up the partitions it
//!   descends from (`layout::recorded_ancestors`) and wait until their readers have read what
//!   was stored there before its first input (`progress::until_read_before`). Here they have:
//!   what is timed is the check alone, the wait's cost when the old partitions are caught up.
//!   A reader still behind makes the new partition wait for it, up to `progress::ORDER_WAIT`:
//!   that is the ordering, not a cost of the check.
//!
//! It prints both totals and the ratio of the wait to the start, and the median of the rounds.

use std::time::{Duration, Instant};

use mapek_bus::inbox::{Inbox, InboxConfig};
use mapek_bus::{JetStream, layout, progress, streams};
use mapek_domain::{Phase, Telemetry};
use mapek_testkit::NatsServer;
use tokio::sync::watch;

mod common;

use common::{bare_readers, burst_events, encode_all, partition_readers, raw_publish};

/// The allocator of the `mapek` binary (ADR 0009).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The count the streams are made with, and the one they grow to.
const FROM: u32 = 8;
const TO: u32 = 32;
/// The mesh's nodes, and the samples stored before the growth (20 rounds of them).
const NODES: usize = 1_000;
const BEFORE: usize = 20_000;

#[tokio::main]
async fn main() {
    let rounds = std::env::var("MAPEK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let server = NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    let firsts = grown_with_old_partitions_read(&server, &js).await;
    println!(
        "order wait at a reader's start, {FROM} partitions grown to {TO}, the old ones read to \
         the end; {} new partitions, one nats-server syncing every message",
        firsts.len()
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let start = starts(&js, &firsts, round).await;
        let wait = order_waits(&js, &firsts).await;
        let ratio = wait.as_secs_f64() / start.as_secs_f64();
        println!(
            "round {round}: start (open the inbox, first batch) {:.1} ms, {:.2} ms a partition; \
             order wait {:.1} ms, {:.2} ms a partition; wait/start {ratio:.2}",
            ms(start),
            ms(start) / firsts.len() as f64,
            ms(wait),
            ms(wait) / firsts.len() as f64,
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "order wait / start, median of {rounds}: {:.2}",
        ratios[ratios.len() / 2]
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Stores a burst in `FROM` partitions, has their analyze readers read it all, grows the
/// streams and the mapping to `TO`, stores one more round and has the old partitions' readers
/// read their part of it too; returns each new partition with the sequence of its first
/// input.
async fn grown_with_old_partitions_read(server: &NatsServer, js: &JetStream) -> Vec<(u32, u64)> {
    apply(js, None).await;
    let messages = encode_all(&burst_events(NODES, BEFORE + NODES));
    raw_publish(js, &messages[..BEFORE], true, 256).await;
    read_to_the_end(js).await;
    apply(js, Some(TO)).await;
    server.reload_with_mapping(&mapek_domain::telemetry_mapping(TO));
    while streams::server_mapping(js).await.ok() != Some(Some(TO)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    raw_publish(js, &messages[BEFORE..], true, 256).await;
    read_to_the_end(js).await;
    let mut firsts = Vec::new();
    for p in FROM..TO {
        let stream = stream_of(js, p).await;
        let handle = js.get_stream(&stream).await.unwrap();
        let first = handle
            .direct_get_next_for_subject(format!("mapek.monitor.{p}.>"), None)
            .await
            .unwrap_or_else(|e| panic!("partition {p} has no sample after the growth: {e}"));
        firsts.push((p, first.sequence));
    }
    firsts
}

/// `mapek streams apply` (with `--partitions` when `partitions` is given).
async fn apply(js: &JetStream, partitions: Option<u32>) {
    let wanted = streams::Wanted {
        partitions,
        ..Default::default()
    };
    let layout = streams::detect_layout(js, wanted).await.unwrap();
    streams::apply_layout(js, &streams::builtin(), layout)
        .await
        .unwrap();
}

/// Runs bare analyze readers on the `FROM` partitions until nothing is pending for them.
async fn read_to_the_end(js: &JetStream) {
    let (stop, stopped) = watch::channel(false);
    let readers = bare_readers(partition_readers(js, "analyze").await, &stopped);
    for p in 0..FROM {
        let stream = js.get_stream(stream_of(js, p).await).await.unwrap();
        loop {
            let info = stream.consumer_info(format!("analyze-p{p}")).await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.send(true).unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
}

async fn stream_of(js: &JetStream, partition: u32) -> String {
    layout::stream_for(js, Phase::Monitor, Some(partition))
        .await
        .unwrap()
}

/// Opens an inbox of its own on each new partition and takes its first batch; the time of
/// all of them. The consumers are deleted after, untimed.
async fn starts(js: &JetStream, firsts: &[(u32, u64)], round: usize) -> Duration {
    let mut took = Duration::ZERO;
    for &(p, _) in firsts {
        let durable = format!("start-r{round}-p{p}");
        let mut config = InboxConfig::new(durable.clone());
        config.filter = Some(format!("mapek.monitor.{p}.>"));
        let started = Instant::now();
        let mut inbox = Inbox::<Telemetry>::open(js, config).await.unwrap();
        let batch = inbox.next_batch(Duration::from_secs(5)).await.unwrap();
        took += started.elapsed();
        assert!(!batch.is_empty(), "partition {p} gave no first batch");
        let stream = inbox.stream().to_owned();
        inbox.close().await;
        js.get_stream(stream)
            .await
            .unwrap()
            .delete_consumer(&durable)
            .await
            .unwrap();
    }
    took
}

/// What a reader on each new partition does before its first input on a grown count; the
/// time of all of them.
async fn order_waits(js: &JetStream, firsts: &[(u32, u64)]) -> Duration {
    let mut took = Duration::ZERO;
    for &(p, seq) in firsts {
        let stream = stream_of(js, p).await;
        let started = Instant::now();
        let after = layout::recorded_ancestors(js, p, TO).await;
        let read =
            progress::until_read_before(js, &stream, ("analyze", Phase::Monitor), &after, seq)
                .await;
        took += started.elapsed();
        assert_eq!(after, [p % FROM], "partition {p} descends from its old one");
        assert!(
            read,
            "the readers of partition {p}'s old one had read it all"
        );
    }
    took
}
