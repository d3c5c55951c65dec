//! What the benchmarks share: fresh streams, and the raw async-nats baseline. Each bench uses
//! part of it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use mapek_bus::{JetStream, headers, streams};
use mapek_domain::Telemetry;
use tokio::sync::watch;

/// One pre-encoded message: subject, event id, body.
pub type RawMessage = (String, String, Bytes);

/// Deletes the streams (and the partition leases) and creates them again, empty.
pub async fn fresh_streams(js: &JetStream) {
    for def in streams::builtin() {
        let _ = js.delete_stream(def.name()).await;
    }
    for i in 0..8 {
        let _ = js.delete_stream(mapek_bus::layout::monitor_stream(i)).await;
    }
    let _ = js.delete_key_value(mapek_loop::lease::BUCKET).await;
    let defs: Vec<_> = streams::builtin()
        .into_iter()
        .map(|d| d.with_replicas(replicas()))
        .collect();
    streams::apply(js, &defs).await.unwrap();
}

/// How many servers the bench runs on, and so each stream's replicas: MAPEK_BENCH_CLUSTER
/// (a cluster on loopback), else 1.
pub fn replicas() -> usize {
    std::env::var("MAPEK_BENCH_CLUSTER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// `count` telemetry samples of a seeded mesh of `nodes` nodes, tick after tick (100 ms apart).
pub fn burst_events(nodes: usize, count: usize) -> Vec<Telemetry> {
    let config = mapek_sim::MeshConfig {
        nodes,
        ..mapek_sim::MeshConfig::default()
    };
    let mut mesh = mapek_sim::Mesh::new(config, 7).unwrap();
    let mut events = Vec::with_capacity(count);
    let mut tick = 0i64;
    while events.len() < count {
        events.extend(mesh.tick(1_795_867_200_000 + tick * 100));
        tick += 1;
    }
    events.truncate(count);
    events
}

/// The messages a publisher of `events` sends: the same subjects, ids and bytes.
pub fn encode_all(events: &[Telemetry]) -> Vec<RawMessage> {
    events
        .iter()
        .map(|e| {
            (
                format!("mapek.monitor.{}", e.node),
                e.event_id.clone(),
                Bytes::from(mapek_codec::encode(e).unwrap()),
            )
        })
        .collect()
}

/// Raw async-nats JetStream publishing of `messages` with `window` acks in flight, with the
/// `Nats-Msg-Id` header or with no header at all; returns how long until the last ack.
pub async fn raw_publish(
    js: &JetStream,
    messages: &[RawMessage],
    msg_id: bool,
    window: usize,
) -> Duration {
    let start = Instant::now();
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(window);
    for (subject, id, payload) in messages {
        if in_flight.len() >= window {
            in_flight.pop_front().unwrap().await.unwrap();
        }
        let ack = if msg_id {
            let mut h = HeaderMap::new();
            h.insert(headers::MSG_ID, id.as_str());
            js.publish_with_headers(subject.clone(), h, payload.clone())
                .await
        } else {
            js.publish(subject.clone(), payload.clone()).await
        };
        in_flight.push_back(ack.unwrap());
    }
    for ack in in_flight {
        ack.await.unwrap();
    }
    start.elapsed()
}

/// Runs `nodes` the way `mapek sim` or real agents run, apart from the loop's workers: on a thread and a
/// tokio runtime of their own (the OS schedules them against the workers, not tokio's
/// cooperative scheduler), with a client connection of their own to `url`. Resolves to what
/// `nodes` returns. The thread starts at once, before the returned future is awaited.
pub fn as_nodes<T, F>(
    url: &str,
    nodes: impl FnOnce(JetStream) -> F + Send + 'static,
) -> impl Future<Output = T>
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let url = url.to_owned();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move { nodes(mapek_bus::connect(&url).await.unwrap()).await })
    });
    async move {
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    }
}

/// The messages of a durable pull consumer per partition of the telemetry, on the monitor
/// stream that holds it, named `<prefix>-p<N>` and filtered as the analyze workers' are,
/// acknowledged cumulatively, in batches of up to 256.
pub async fn partition_readers(js: &JetStream, prefix: &str) -> Vec<pull::Stream> {
    let mut readers = Vec::new();
    for p in 0..8 {
        let stream = mapek_bus::layout::stream_for(js, mapek_domain::Phase::Monitor, Some(p))
            .await
            .unwrap();
        let filter = format!("mapek.monitor.{p}.>");
        readers.push(pull_reader(js, &stream, &format!("{prefix}-p{p}"), &filter).await);
    }
    readers
}

/// The messages of a durable pull consumer of `stream` per filter in `filters` (an empty
/// filter takes the whole stream), named `<prefix>-p<N>`, acknowledged cumulatively, in
/// batches of up to 256.
pub async fn pull_readers(
    js: &JetStream,
    stream: &str,
    prefix: &str,
    filters: &[String],
) -> Vec<pull::Stream> {
    let mut readers = Vec::new();
    for (p, filter) in filters.iter().enumerate() {
        readers.push(pull_reader(js, stream, &format!("{prefix}-p{p}"), filter).await);
    }
    readers
}

/// The messages of the durable pull consumer `durable` of `stream` through `filter`,
/// acknowledged cumulatively, in batches of up to 256.
async fn pull_reader(js: &JetStream, stream: &str, durable: &str, filter: &str) -> pull::Stream {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: filter.to_owned(),
            ack_policy: AckPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    consumer
        .stream()
        .max_messages_per_batch(256)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .unwrap()
}

/// Lets the monitor streams take fast batches (nats-server 2.14+, `allow_batched`).
pub async fn allow_batched(js: &JetStream) {
    let monitor = mapek_bus::layout::streams_of(js, mapek_domain::Phase::Monitor);
    for stored in monitor.await.unwrap() {
        let mut stream = js.get_stream(&stored.name).await.unwrap();
        let mut config = stream.info().await.unwrap().config.clone();
        config.allow_batch_publish = true;
        js.update_stream(config).await.unwrap();
    }
}

/// Publishes `messages` as one fast batch (ADR-50: `<inbox>.<flow>.ok.<seq>.<op>.$FI`
/// reply subjects, the server acks every up to `flow` stored messages), with at most two
/// flows unacknowledged; returns how long until the commit's ack.
pub async fn fast_publish(js: &JetStream, messages: &[RawMessage], flow: u16) -> Duration {
    use futures::StreamExt;
    let client = js.client();
    let inbox = client.new_inbox();
    let mut acks = client.subscribe(format!("{inbox}.>")).await.unwrap();
    let prefix = format!("{inbox}.{flow}.ok.");
    let start = Instant::now();
    let mut acked = 0u64;
    let mut window = u64::from(flow);
    let n = messages.len() as u64;
    // A flow ack moves the window; an error or a gap fails the bench; anything else is the
    // commit's pub ack, which ends the batch (true).
    let take = |m: async_nats::Message, acked: &mut u64, window: &mut u64| -> bool {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        match v.get("type").and_then(|t| t.as_str()) {
            Some("ack") => {
                *acked = v["seq"].as_u64().unwrap();
                *window = v["msgs"].as_u64().unwrap().max(1);
                false
            }
            _ => {
                assert!(v.get("stream").is_some(), "the fast batch failed: {v}");
                assert_eq!(v["count"].as_u64(), Some(n), "the batch's count: {v}");
                true
            }
        }
    };
    for (i, (subject, id, payload)) in messages.iter().enumerate() {
        let seq = i as u64 + 1;
        while seq > 1 && acked + window * 2 < seq {
            let m = acks.next().await.unwrap();
            take(m, &mut acked, &mut window);
        }
        let op = if seq == 1 { 0 } else { 1 };
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, id.as_str());
        client
            .publish_with_reply_and_headers(
                subject.clone(),
                format!("{prefix}{seq}.{op}.$FI"),
                h,
                payload.clone(),
            )
            .await
            .unwrap();
        if seq == 1 {
            let m = acks.next().await.unwrap();
            take(m, &mut acked, &mut window);
        }
    }
    client
        .publish_with_reply(
            messages[0].0.clone(),
            format!("{prefix}{}.3.$FI", n + 1),
            Bytes::new(),
        )
        .await
        .unwrap();
    loop {
        let m = acks.next().await.unwrap();
        if take(m, &mut acked, &mut window) {
            break;
        }
    }
    start.elapsed()
}

/// Bare readers: a task per pull stream that takes messages in batches of up to 256 and
/// acknowledges each batch's last (as analyze does with `AckPolicy::All`), and does nothing
/// else; they stop when `stop` turns true.
pub fn bare_readers(
    streams: Vec<pull::Stream>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    let mut readers = Vec::new();
    for mut messages in streams {
        let mut stop = stop.clone();
        readers.push(tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    m = messages.next() => m.unwrap().unwrap(),
                    _ = stop.wait_for(|s| *s) => return,
                };
                let mut last = first;
                for _ in 1..256 {
                    match futures::FutureExt::now_or_never(messages.next()) {
                        Some(Some(m)) => last = m.unwrap(),
                        _ => break,
                    }
                }
                last.ack().await.unwrap();
            }
        }));
    }
    readers
}

pub use mapek_testkit::cpu::cpu_seconds;

/// The release `mapek`, pointed at `url`, with nothing of the caller's environment; its
/// stderr is piped, for `output()`.
pub fn release_mapek(url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mapek"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MAPEK_NATS_URL", url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// The servers a bench runs on: one, or a JetStream cluster on loopback.
pub enum Servers {
    /// One nats-server.
    One(mapek_testkit::NatsServer),
    /// A cluster.
    Cluster(mapek_testkit::NatsCluster),
}

impl Servers {
    /// The URL to connect to (every server of a cluster).
    pub fn url(&self) -> String {
        match self {
            Servers::One(s) => s.url(),
            Servers::Cluster(c) => c.url(),
        }
    }

    /// The servers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Servers::One(s) => s.pid().into_iter().collect(),
            Servers::Cluster(c) => c.pids(),
        }
    }

    /// How many servers there are: the replicas each stream gets.
    pub fn replicas(&self) -> usize {
        match self {
            Servers::One(_) => 1,
            Servers::Cluster(c) => c.len(),
        }
    }

    /// The servers' CPU seconds so far, together.
    pub fn cpu(&self) -> f64 {
        self.pids()
            .iter()
            .map(|p| cpu_seconds(&format!("/proc/{p}/stat")))
            .sum()
    }
}
