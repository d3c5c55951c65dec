//! The loop under load, on one machine.
//!
//! `cargo bench -p mapek --bench loop_cycle` (MAPEK_BENCH_SECONDS sets the length of part 1,
//! default 60; MAPEK_BENCH_BURST the events of part 2, default 200 000, and
//! MAPEK_BENCH_ROUNDS how often part 2 is repeated, default 3).
//!
//! 1. Cycle time: 1 000 simulated nodes at 10 Hz for 60 s, with a link degrading every
//!    half second somewhere in the mesh (some 480 decisions, so the p99 is not just the
//!    second-slowest of a hundred), through the analyze and plan workers (8 partitions each,
//!    in this process). The simulated nodes publish on a client connection of their own, from
//!    a thread and a tokio runtime of their own, as `mapek sim` or real agents do from their
//!    own processes. For every decision, the time from the moment the server stored the telemetry
//!    that tipped the detector to the moment it stored the decision: p50 and p99, and each
//!    leg's (telemetry → symptom, symptom → decision) p50, p99 and maximum. The
//!    analyze consumers' backlog is sampled every second; its maximum shows whether the loop
//!    keeps up.
//! 2. Sustained rate: a burst of telemetry published as fast as possible while the workers
//!    run; the loop's rate is the burst size over the time until analyze has acknowledged all
//!    of it. The raw baseline, in the same run, is async-nats JetStream publishing the same
//!    bytes with the same Nats-Msg-Id and nothing consuming them. Both publish from a thread,
//!    a runtime and a client connection of their own (the nodes'), the workers read on
//!    another (the loop's). Between the two, raw publishing again with a bare reader per
//!    partition that only takes and acknowledges: the server's own cost of delivering each
//!    event once, the ceiling of any loop that reads what it stores. Then the same bare
//!    readers with the nodes publishing through the library, as they do for the loop: the
//!    library's publishing cost, apart from the loop's. The four are repeated in rounds; each
//!    round's ratios are to the raw rate of the same round, and the median of them is the
//!    result. Each way's CPU per event is read from `/proc` (nats-server's, this process's
//!    tokio workers', the rest of this process's: the nodes), a steadier measure than the
//!    rates when the machine's speed drifts between runs.
//!
//! The server maps telemetry into partitions as the configs mapek ships do, so the monitor
//! streams are split (ADR 0012) for the loop and for the raw baseline alike;
//! MAPEK_BENCH_LAYOUT=single runs both on a server without the mapping (one monitor stream).
//!
//! MAPEK_BENCH_CLUSTER=3 runs both on a 3-node JetStream cluster on loopback instead, with
//! every stream replicated 3 times and `sync_interval: always` as mapek ships it (ADR 0014);
//! MAPEK_BENCH_SYNC=default leaves the server's default sync, to see what syncing costs. The
//! CPU of nats-server is then the three servers' together. MAPEK_BENCH_SECONDS=0 skips part 1.
//!
//! MAPEK_BENCH_NATS_CONFIG adds lines to the server's config (`\n` between them), to profile
//! it: `MAPEK_BENCH_NATS_CONFIG='prof_port: 6060\nprof_block_rate: 1'`.
//!
//! The process uses mimalloc, as the `mapek` binary does (ADR 0009).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mapek_bus::{JetStream, Publisher, StartAt, Subscriber};
use mapek_domain::{AnalyzeConfig, Analyzer, Decision, NodeId, Policy, Symptom, Telemetry};
use mapek_loop::lease::run_partitioned;
use mapek_loop::plan::PlanStage;
use mapek_sim::{Fault, FaultScript, Mesh, MeshConfig};
use mapek_testkit::{NatsCluster, NatsServer};

mod common;

/// The allocator of the `mapek` binary, which runs these workers in production (ADR 0009).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{
    Servers, as_nodes, bare_readers, burst_events, cpu_seconds, encode_all, fresh_streams,
    partition_readers, raw_publish,
};
use tokio::sync::watch;

fn nodes() -> usize {
    env("MAPEK_BENCH_NODES", 1000)
}
const HZ: f64 = 10.0;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts analyze and plan workers; they stop when `stop` turns true.
fn start_loop(js: &JetStream, stop: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let analyze = tokio::spawn(run_partitioned(
        js.clone(),
        "analyze",
        8,
        "bench".into(),
        mapek_loop::lease::DEFAULT_TTL,
        |_| Analyzer::new(AnalyzeConfig::default()),
        wait(stop.clone()),
    ));
    let plan = tokio::spawn(run_partitioned(
        js.clone(),
        "plan",
        8,
        "bench".into(),
        mapek_loop::lease::DEFAULT_TTL,
        |_| PlanStage::without_knowledge(Policy::builtin()),
        wait(stop.clone()),
    ));
    vec![
        tokio::spawn(async move {
            analyze.await.unwrap().unwrap();
        }),
        tokio::spawn(async move {
            plan.await.unwrap().unwrap();
        }),
    ]
}

/// The stream that holds each analyze partition, looked up once before a measurement: a
/// backlog poll then costs the server one consumer info per partition, not the stream
/// lookups as well (six requests per partition, every 20 ms, which competed with the loop for
/// the server).
async fn partition_streams(js: &JetStream) -> Vec<async_nats::jetstream::stream::Stream> {
    let mut streams = Vec::with_capacity(8);
    for p in 0..8 {
        let name = mapek_bus::layout::stream_for(js, mapek_domain::Phase::Monitor, Some(p))
            .await
            .unwrap();
        streams.push(js.get_stream(name).await.unwrap());
    }
    streams
}

/// Messages the analyze consumers have yet to take or acknowledge; `streams` from
/// [`partition_streams`], by partition. `None` while a partition has no consumer yet.
async fn analyze_backlog(streams: &[async_nats::jetstream::stream::Stream]) -> Option<u64> {
    let mut total = 0;
    for (p, stream) in streams.iter().enumerate() {
        let info = stream.consumer_info(format!("analyze-p{p}")).await.ok()?;
        total += info.num_pending + info.num_ack_pending as u64;
    }
    Some(total)
}

/// Waits until the analyze consumers exist and have taken and acknowledged everything.
///
/// # Panics
/// If they have not within 120 s: a rate measured to then would mean nothing.
async fn wait_drained(streams: &[async_nats::jetstream::stream::Stream]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let backlog = analyze_backlog(streams).await;
        if backlog == Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "analyze did not drain within 120 s (backlog {backlog:?}; None: a consumer is missing)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stored_times<E: mapek_codec::AvroEvent>(
    js: &JetStream,
    key: impl Fn(&E) -> String,
) -> HashMap<String, (time::OffsetDateTime, E)> {
    let mut sub = Subscriber::<E>::open_subject(js, E::PHASE.stored_filter(None), StartAt::All)
        .await
        .unwrap();
    let mut out = HashMap::new();
    for _ in 0..sub.pending_at_start() {
        let r = sub.next().await.unwrap().unwrap();
        if let Ok(e) = r.event {
            out.insert(key(&e), (r.stored, e));
        }
    }
    out
}

/// CPU seconds so far of nats-server (`servers`), of this process's tokio workers (the
/// loop's, and the bare readers'), and of the rest of the process (the nodes' publisher on its
/// own thread, main): the process's total less its workers', so a thread that has ended (the
/// nodes', once they have published) still counts.
fn cpu_split(servers: &[u32]) -> [f64; 3] {
    let server: f64 = servers
        .iter()
        .map(|p| cpu_seconds(&format!("/proc/{p}/stat")))
        .sum();
    let mut workers = 0.0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with("tokio-rt-worker") {
            workers += cpu_seconds(&dir.join("stat").display().to_string());
        }
    }
    let process = cpu_seconds("/proc/self/stat");
    [server, workers, process - workers]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Publish acks in flight for both publishers of part 2 (MAPEK_BENCH_WINDOW, default the
/// library's).
fn window() -> usize {
    env("MAPEK_BENCH_WINDOW", mapek_bus::publisher::DEFAULT_WINDOW)
}

/// A new link degrades every this many seconds (MAPEK_BENCH_FAULT_EVERY_MS, default 500).
fn fault_every_s() -> f64 {
    env("MAPEK_BENCH_FAULT_EVERY_MS", 500) as f64 / 1000.0
}

async fn cycle_time(js: &JetStream, url: &str, servers: &[u32], seconds: usize) {
    fresh_streams(js).await;
    let faults = ((seconds as f64 - 2.0).max(0.0) / fault_every_s()) as usize;
    let script = FaultScript {
        fault: (0..faults)
            .map(|k| {
                let a = (k * 37) % nodes();
                Fault::LinkDegradation {
                    start_s: 2.0 + fault_every_s() * k as f64,
                    duration_s: Some(6.0),
                    a: NodeId::new(format!("n{a}")).unwrap(),
                    b: NodeId::new(format!("n{}", (a + 1) % nodes())).unwrap(),
                    added_latency_ms: 150.0,
                    added_loss: 0.3,
                }
            })
            .collect(),
    };
    let mesh = Mesh::new(
        MeshConfig {
            nodes: nodes(),
            ..MeshConfig::default()
        },
        7,
    )
    .unwrap()
    .with_faults(&script)
    .unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = start_loop(js, &stop_rx);
    let partitions = partition_streams(js).await;
    let (sim_tx, mut sim_rx) = watch::channel(false);
    let start_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let cpu_before = cpu_split(servers);
    let cpu_since = Instant::now();
    let sim = as_nodes(url, move |nodes_js| {
        let client = nodes_js.client();
        mapek_sim::run(nodes_js, client, mesh, HZ, start_ms, async move {
            let _ = sim_rx.wait_for(|s| *s).await;
        })
    });
    let mut max_backlog = 0;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Until every partition's consumer is there (the first second), it reads as none.
        max_backlog = max_backlog.max(analyze_backlog(&partitions).await.unwrap_or(0));
    }
    let cpu_after = cpu_split(servers);
    let cpu_share = |i: usize| (cpu_after[i] - cpu_before[i]) / cpu_since.elapsed().as_secs_f64();
    let cpu = [cpu_share(0), cpu_share(1), cpu_share(2)];
    sim_tx.send(true).unwrap();
    let report = sim.await.unwrap();
    wait_drained(&partitions).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).unwrap();
    for w in workers {
        w.await.unwrap();
    }

    let decisions = stored_times::<Decision>(js, |d| d.decision_id.clone()).await;
    let symptoms = stored_times::<Symptom>(js, |s| s.symptom_id.clone()).await;
    let telemetry = stored_times::<Telemetry>(js, |t| t.event_id.clone()).await;
    let ms = |d: time::Duration| d.as_seconds_f64() * 1000.0;
    let legs: Vec<(f64, f64)> = decisions
        .values()
        .filter_map(|(decided, d)| {
            let (found, symptom) = symptoms.get(&d.symptom_id)?;
            let (sampled, _) = telemetry.get(&symptom.caused_by)?;
            Some((ms(*found - *sampled), ms(*decided - *found)))
        })
        .collect();
    assert!(
        !legs.is_empty(),
        "no decision to measure: did the nodes publish?"
    );
    let mut cycles: Vec<f64> = legs.iter().map(|(a, b)| a + b).collect();
    let mut analyze: Vec<f64> = legs.iter().map(|(a, _)| *a).collect();
    let mut plan: Vec<f64> = legs.iter().map(|(_, b)| *b).collect();
    for v in [&mut cycles, &mut analyze, &mut plan] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "1. cycle time, {} nodes at {HZ} Hz for {seconds} s ({} telemetry events, {} symptoms, {} decisions):",
        nodes(),
        report.published.acked,
        symptoms.len(),
        decisions.len()
    );
    println!(
        "   telemetry stored -> decision stored: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal p50 <= 2, p99 <= 10)",
        percentile(&cycles, 0.5),
        percentile(&cycles, 0.99),
        cycles.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "   of which telemetry -> symptom p50 {:.2} ms, symptom -> decision p50 {:.2} ms",
        percentile(&analyze, 0.5),
        percentile(&plan, 0.5)
    );
    println!(
        "   tail by leg: telemetry -> symptom p99 {:.2} ms, max {:.2} ms; symptom -> decision p99 {:.2} ms, max {:.2} ms",
        percentile(&analyze, 0.99),
        analyze.last().copied().unwrap_or(f64::NAN),
        percentile(&plan, 0.99),
        plan.last().copied().unwrap_or(f64::NAN)
    );
    println!("   analyze backlog, sampled each second: at most {max_backlog} messages");
    println!(
        "   CPU while the nodes published, in cores of the 2: nats-server {:.2}, the loop's workers {:.2}, the nodes {:.2}",
        cpu[0], cpu[1], cpu[2]
    );
}

/// Waits until the analyze consumers (of `partitions`) have taken all `burst` events
/// published since `start`, then stops `readers`; returns the events per second from `start`
/// to then.
async fn drained_rate(
    partitions: &[async_nats::jetstream::stream::Stream],
    burst: usize,
    start: Instant,
    stop: watch::Sender<bool>,
    readers: Vec<tokio::task::JoinHandle<()>>,
) -> f64 {
    wait_drained(partitions).await;
    let rate = burst as f64 / start.elapsed().as_secs_f64();
    stop.send(true).unwrap();
    for r in readers {
        r.await.unwrap();
    }
    rate
}

/// The nodes publish `events` through the library, from their own thread and connection,
/// until every one is acknowledged.
async fn library_publish(url: &str, events: Vec<Telemetry>) {
    let published = as_nodes(url, move |nodes_js| async move {
        let mut publisher = Publisher::with_window(nodes_js, window());
        for e in &events {
            publisher.publish(e).await.unwrap();
        }
        publisher.finish().await
    });
    assert!(published.await.all_acked());
}

/// CPU microseconds per event of nats-server, of this process's tokio workers and of its
/// other threads, between two [`cpu_split`] readings around `events` events.
fn per_event(before: [f64; 3], after: [f64; 3], events: usize) -> [f64; 3] {
    std::array::from_fn(|i| (after[i] - before[i]) * 1e6 / events as f64)
}

/// One round of part 2: each way of publishing and reading the burst, its rate in events/s
/// and its CPU per event.
struct Round {
    raw: (f64, [f64; 3]),
    bare: (f64, [f64; 3]),
    library_bare: (f64, [f64; 3]),
    looped: (f64, [f64; 3]),
}

/// The ways of [`Round`], in its order.
const WAYS: [&str; 4] = [
    "raw publish",
    "raw, bare readers",
    "library, bare readers",
    "the loop",
];

impl Round {
    /// Each way's rate and CPU per event, in the order of [`WAYS`].
    fn ways(&self) -> [(f64, [f64; 3]); 4] {
        [self.raw, self.bare, self.library_bare, self.looped]
    }
}

/// On fresh streams, with a bare reader per partition: runs `publish` (of `burst` events),
/// and returns the rate at which the readers took them all and the CPU per event meanwhile.
/// `publish` starts when awaited, after the readers, the clock and the CPU count.
async fn with_bare_readers(
    js: &JetStream,
    servers: &[u32],
    burst: usize,
    publish: impl Future<Output = ()>,
) -> (f64, [f64; 3]) {
    fresh_streams(js).await;
    let (read_tx, read_rx) = watch::channel(false);
    let readers = bare_readers(partition_readers(js, "analyze").await, &read_rx);
    let partitions = partition_streams(js).await;
    let cpu = cpu_split(servers);
    let start = Instant::now();
    publish.await;
    (
        drained_rate(&partitions, burst, start, read_tx, readers).await,
        per_event(cpu, cpu_split(servers), burst),
    )
}

/// Publishes `events` and reads them each way in turn, on fresh streams each time.
async fn sustained_round(
    js: &JetStream,
    url: &str,
    servers: &[u32],
    events: &[Telemetry],
) -> Round {
    let burst = events.len();
    let messages = encode_all(events);
    let again = messages.clone();

    // Raw: the same bytes, the same dedup header, nobody consuming. The nodes publish from
    // their own thread and connection, in both.
    fresh_streams(js).await;
    let cpu = cpu_split(servers);
    let raw_took = as_nodes(url, move |nodes_js| async move {
        raw_publish(&nodes_js, &messages, true, window()).await
    })
    .await;
    let raw = (
        burst as f64 / raw_took.as_secs_f64(),
        per_event(cpu, cpu_split(servers), burst),
    );

    // Raw again, with a bare reader per partition that only takes and acknowledges (no
    // decoding, no stage): the share of the gap that is the server delivering to consumers.
    let bare = with_bare_readers(js, servers, burst, async move {
        as_nodes(url, move |nodes_js| async move {
            raw_publish(&nodes_js, &again, true, window()).await
        })
        .await;
    })
    .await;

    // The nodes publishing through the library as in the loop's run, with the bare readers:
    // what the library's publishing costs the pair, so the loop's own cost is the rest.
    let to_publish = events.to_vec(); // copied before the clock and the CPU count start
    let library_bare =
        with_bare_readers(js, servers, burst, library_publish(url, to_publish)).await;

    // The loop: publish through the library while analyze and plan run; done when analyze
    // has acknowledged every event.
    fresh_streams(js).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = start_loop(js, &stop_rx);
    tokio::time::sleep(Duration::from_secs(1)).await; // the workers take their leases
    let partitions = partition_streams(js).await;
    let to_publish = events.to_vec();
    let cpu = cpu_split(servers);
    let start = Instant::now();
    library_publish(url, to_publish).await;
    let looped = (
        drained_rate(&partitions, burst, start, stop_tx, workers).await,
        per_event(cpu, cpu_split(servers), burst),
    );
    Round {
        raw,
        bare,
        library_bare,
        looped,
    }
}

/// The middle value (the lower of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get((values.len().max(1) - 1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

async fn sustained_rate(js: &JetStream, url: &str, servers: &[u32], burst: usize, rounds: usize) {
    let events = burst_events(nodes(), burst);
    println!(
        "2. sustained rate, a burst of {burst} telemetry events from {} nodes, {rounds} rounds \
         (events/s; ratios to raw publishing in the same round):",
        nodes()
    );
    println!(
        "   round   raw publish   bare readers   library, bare   the loop   loop/raw  loop/bare  loop/library-bare"
    );
    let mut results = Vec::new();
    for round in 1..=rounds {
        let r = sustained_round(js, url, servers, &events).await;
        println!(
            "   {round:>5} {:>13.0} {:>14.0} {:>15.0} {:>10.0} {:>10.2} {:>10.2} {:>18.2}",
            r.raw.0,
            r.bare.0,
            r.library_bare.0,
            r.looped.0,
            r.looped.0 / r.raw.0,
            r.looped.0 / r.bare.0,
            r.looped.0 / r.library_bare.0,
        );
        results.push(r);
    }
    let ratio = |f: fn(&Round) -> f64| median(results.iter().map(f).collect());
    println!(
        "   median ratio loop/raw: {:.2} (goal >= 0.5); bare readers/raw: {:.2}; loop/bare readers: {:.2}",
        ratio(|r| r.looped.0 / r.raw.0),
        ratio(|r| r.bare.0 / r.raw.0),
        ratio(|r| r.looped.0 / r.bare.0),
    );
    println!(
        "   CPU per event, median of the rounds, in microseconds (nats-server + this process's tokio workers \
         (readers or loop) + the rest (the nodes publishing)):"
    );
    for (way, what) in WAYS.iter().enumerate() {
        let cpu = |r: &Round| r.ways()[way].1;
        let part = |i: usize| median(results.iter().map(|r| cpu(r)[i]).collect());
        let total = median(results.iter().map(|r| cpu(r).iter().sum()).collect());
        println!(
            "     {what:<22} {:>5.1} + {:>5.1} + {:>5.1} = {total:>5.1}",
            part(0),
            part(1),
            part(2)
        );
    }
}

fn main() {
    let seconds = env("MAPEK_BENCH_SECONDS", 60);
    let burst = env("MAPEK_BENCH_BURST", 200_000);
    let rounds = env("MAPEK_BENCH_ROUNDS", 3).max(1);
    // The loop's runtime as `mapek run` builds it: half the cores, or TOKIO_WORKER_THREADS.
    let runtime = mapek_loop::runtime::build().unwrap();
    runtime.block_on(async {
        let (servers, layout) = servers();
        let url = servers.url();
        let js = mapek_bus::connect(&url).await.unwrap();
        println!("loop_cycle: nats-server and the loop on the same 2-core machine; {layout}");
        let pids = servers.pids();
        if seconds > 0 {
            cycle_time(&js, &url, &pids, seconds).await;
        }
        sustained_rate(&js, &url, &pids, burst, rounds).await;
    });
}

/// One server, or with MAPEK_BENCH_CLUSTER=3 a 3-node cluster on loopback (streams with 3
/// replicas, `sync_interval: always` unless MAPEK_BENCH_SYNC=default).
fn servers() -> (Servers, String) {
    if common::replicas() > 1 {
        let sync = std::env::var("MAPEK_BENCH_SYNC").map_or(true, |v| v != "default");
        let cluster = NatsCluster::start_with_sync(common::replicas(), sync);
        let layout = format!(
            "a {}-node cluster on loopback, streams with {} replicas, {}",
            cluster.len(),
            common::replicas(),
            if sync {
                "sync_interval: always"
            } else {
                "the server's default sync (every 2 min)"
            }
        );
        return (Servers::Cluster(cluster), layout);
    }
    // MAPEK_BENCH_NATS_CONFIG: extra server config lines, to profile the server
    // (`prof_port: 6060`, `prof_block_rate: 1`).
    let extra = std::env::var("MAPEK_BENCH_NATS_CONFIG").unwrap_or_default();
    // MAPEK_BENCH_LAYOUT=single: a server without the telemetry mapping, so telemetry in
    // one stream (ADR 0012's "before").
    let single = std::env::var("MAPEK_BENCH_LAYOUT").is_ok_and(|v| v == "single");
    let extra = extra.replace("\\n", "\n");
    let server = NatsServer::start_with_options(&extra, &[], !single);
    let layout = if single {
        "telemetry in one stream (no server mapping)"
    } else {
        "telemetry mapped by the server over 2 streams"
    };
    (Servers::One(server), layout.to_owned())
}
