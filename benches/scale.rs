//! The whole loop as a user runs it, at the sizes of a real mesh.
//!
//! `cargo bench -p mapek --bench scale` runs, for each level of MAPEK_SCALE_LEVELS (default
//! `1000x10,10000x1,10000x2,10000x5`: nodes × samples per node per second):
//!
//! 1. the raw baseline: `mapek sim` alone against a fresh nats-server for MAPEK_SCALE_SECONDS
//!    (default 60), nothing reading: what the server and the simulator cost alone, and the
//!    rate the mesh gets stored at;
//! 2. the loop: the same, with `mapek run` (every phase and both projections, embedded SQLite
//!    and qdrant-edge under a data directory of its own, the shipped policy) started first.
//!
//! Both are the release `mapek` binary, as processes of their own, on a server that maps
//! telemetry into partitions as the shipped configs do. For each level it prints the offered
//! and stored rates and their ratio to the baseline's; every durable reader's backlog when
//! the mesh stops (the read model's telemetry projection holds up to a second of samples
//! before it writes them, docs/knowledge.md), and how long the loop then takes to catch up; the decision cycle's p50 and
//! p99 (from `mapek_cycle_seconds` on the loop's /metrics: the upper bound of the bucket
//! they fall in); and the CPU per stored event of nats-server, the loop (the stores are in
//! its process) and the simulator, from `/proc`, against the baseline's.
//!
//! MAPEK_SCALE_SYNC=default runs the servers with their default flushing instead of
//! `sync_interval: always` (ADR 0014): syncing every message is what limits how fast this
//! machine stores telemetry.
//!
//! MAPEK_SCALE_CLUSTER=3 runs on a 3-node JetStream cluster on loopback (streams replicated
//! 3 times), and MAPEK_SCALE_LOOPS=2 starts two `mapek run` processes sharing the partitions.
//! A list runs each count in turn against the same raw baseline, each on fresh servers:
//! `MAPEK_SCALE_LOOPS=1,2,1,2` is the scale-out check of docs/scaling.md, in one run.
//!
//! MAPEK_SCALE_PARTITIONS=32 has the (single) server map telemetry into 32 partitions instead
//! of 8, and every phase with it (ADR 0024): what more partitions cost the loop on one
//! machine, against a run without it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mapek_bus::JetStream;
use mapek_domain::Phase;
use mapek_testkit::nats::free_port;
use mapek_testkit::{NatsCluster, NatsServer};

mod common;

use common::{Servers, cpu_seconds, release_mapek};

/// A mesh size and rate.
#[derive(Clone, Copy, Debug)]
struct Level {
    nodes: usize,
    hz: f64,
}

impl Level {
    fn offered(self) -> f64 {
        self.nodes as f64 * self.hz
    }
}

fn levels() -> Vec<Level> {
    let spec = std::env::var("MAPEK_SCALE_LEVELS")
        .unwrap_or_else(|_| "1000x10,10000x1,10000x2,10000x5".into());
    spec.split(',')
        .map(|l| {
            let (nodes, hz) = l.split_once('x').expect("levels are NODESxHZ");
            Level {
                nodes: nodes.trim().parse().expect("nodes"),
                hz: hz.trim().parse().expect("hz"),
            }
        })
        .collect()
}

/// How many `mapek run` processes each loop run of a level starts, in turn.
fn loop_counts() -> Vec<usize> {
    let spec = std::env::var("MAPEK_SCALE_LOOPS").unwrap_or_else(|_| "1".into());
    spec.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("MAPEK_SCALE_LOOPS is a list of counts")
        })
        .collect()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The servers of a run: one, or a cluster of MAPEK_SCALE_CLUSTER servers; each syncs every
/// message to disk before acknowledging it as mapek ships them, or with
/// MAPEK_SCALE_SYNC=default flushes as the server does by default.
fn start_servers() -> Servers {
    let sync = std::env::var("MAPEK_SCALE_SYNC").map_or(true, |v| v != "default");
    let partitions = env_or("MAPEK_SCALE_PARTITIONS", 8) as u32;
    let mapping = mapek_domain::telemetry_mapping(partitions);
    match env_or("MAPEK_SCALE_CLUSTER", 1) {
        1 => Servers::One(NatsServer::start_with_sync(&mapping, sync)),
        n => {
            assert_eq!(partitions, 8, "MAPEK_SCALE_PARTITIONS is for one server");
            Servers::Cluster(NatsCluster::start_with_sync(n as usize, sync))
        }
    }
}

fn apply_streams(servers: &Servers) {
    let out = release_mapek(&servers.url())
        .args(["streams", "apply", "--replicas"])
        .arg(servers.replicas().to_string())
        .output()
        .expect("mapek streams apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_sim(url: &str, level: Level, seconds: u64) -> Child {
    release_mapek(url)
        .args(["sim", "--demo-faults", "--nodes"])
        .arg(level.nodes.to_string())
        .arg("--hz")
        .arg(level.hz.to_string())
        .arg("--duration")
        .arg(format!("{seconds}s"))
        .spawn()
        .expect("mapek sim")
}

fn start_loop(url: &str, name: &str, data: &Path, metrics: u16) -> Child {
    release_mapek(url)
        .args(["run", "--worker", name, "--metrics-addr"])
        .arg(format!("127.0.0.1:{metrics}"))
        .env("MAPEK_DATA_DIR", data.join(name))
        .spawn()
        .expect("mapek run")
}

/// Runs `sim` to its end, sampling its CPU (its /proc entry is gone once it is reaped).
async fn finish(mut sim: Child) -> f64 {
    let pid = sim.id();
    let mut cpu = 0.0;
    loop {
        let now = cpu_seconds(&format!("/proc/{pid}/stat"));
        if let Some(status) = sim.try_wait().expect("wait for mapek sim") {
            assert!(status.success(), "mapek sim failed");
            return cpu;
        }
        cpu = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Telemetry events stored, over every monitor stream.
async fn stored(js: &JetStream) -> u64 {
    let mut total = 0;
    for s in mapek_bus::layout::streams_of(js, Phase::Monitor)
        .await
        .unwrap()
    {
        if let Ok(mut stream) = js.get_stream(&s.name).await {
            total += stream.info().await.map_or(0, |i| i.state.messages);
        }
    }
    total
}

/// What each durable reader has not acknowledged yet, summed by reader (its partitions
/// together: `analyze`, `knowledge-sql-monitor`, …).
async fn backlog(js: &JetStream) -> BTreeMap<String, u64> {
    let mut behind = BTreeMap::new();
    for stream in mapek_bus::progress::loop_progress(js)
        .await
        .unwrap_or_default()
    {
        for c in stream.consumers.iter().filter(|c| c.durable) {
            let reader = match c.name.rsplit_once("-p") {
                Some((head, p)) if p.bytes().all(|b| b.is_ascii_digit()) => head,
                _ => c.name.as_str(),
            };
            *behind.entry(reader.to_owned()).or_default() += c.behind;
        }
    }
    behind
}

/// Waits until the durable readers exist (the loop has started) or 60 s pass.
async fn until_reading(js: &JetStream, loops: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let readers = backlog(js).await;
        if readers.contains_key("analyze") && readers.contains_key("execute") {
            // Each process takes its share of the partitions within a lease period.
            tokio::time::sleep(Duration::from_secs(2 * loops as u64)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the loop's readers never appeared");
}

/// The p50 and p99 of the decision cycle, as the upper bounds of the buckets they fall in,
/// from the loop processes' /metrics pages added together.
async fn cycle_quantiles(ports: &[u16]) -> Option<(f64, f64)> {
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for port in ports {
        let page = metrics_page(*port).await?;
        for line in page.lines() {
            let Some(rest) = line.strip_prefix("mapek_cycle_seconds_bucket{le=\"") else {
                continue;
            };
            let (le, count) = rest.split_once("\"} ")?;
            let le: f64 = le.parse().unwrap_or(f64::INFINITY);
            let count: f64 = count.trim().parse().ok()?;
            buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += count;
        }
    }
    let mut sorted: Vec<(f64, f64)> = buckets.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last()?.1;
    if total == 0.0 {
        return None;
    }
    let at = |q: f64| {
        sorted
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map(|(le, _)| *le)
    };
    Some((at(0.5)?, at(0.99)?))
}

async fn metrics_page(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut page = String::new();
    socket.read_to_string(&mut page).await.ok()?;
    Some(page)
}

/// What the raw baseline measured.
struct Raw {
    rate: f64,
    server_us: f64,
    sim_us: f64,
}

async fn raw(level: Level, seconds: u64) -> Raw {
    let servers = start_servers();
    apply_streams(&servers);
    let js = mapek_bus::connect(&servers.url()).await.unwrap();
    let server_cpu = servers.cpu();
    let started = Instant::now();
    let sim_cpu = finish(start_sim(&servers.url(), level, seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let events = stored(&js).await.max(1) as f64;
    Raw {
        rate: events / elapsed,
        server_us: (servers.cpu() - server_cpu) / events * 1e6,
        sim_us: sim_cpu / events * 1e6,
    }
}

async fn with_loop(level: Level, seconds: u64, raw: &Raw, loops: usize) {
    let servers = start_servers();
    apply_streams(&servers);
    let url = servers.url();
    let js = mapek_bus::connect(&url).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..loops).map(|_| free_port()).collect();
    let mut processes: Vec<Child> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| start_loop(&url, &format!("scale-{i}"), data.path(), *port))
        .collect();
    until_reading(&js, loops).await;
    let loop_cpu = || -> f64 {
        processes
            .iter()
            .map(|p| cpu_seconds(&format!("/proc/{}/stat", p.id())))
            .sum()
    };
    let (server_cpu, loop_cpu0) = (servers.cpu(), loop_cpu());
    let started = Instant::now();
    let sim_cpu = finish(start_sim(&url, level, seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let at_end = backlog(&js).await;
    let stopped = Instant::now();
    let drain_limit = Duration::from_secs(env_or("MAPEK_SCALE_DRAIN_SECONDS", 120));
    let mut caught_up = None;
    while stopped.elapsed() < drain_limit {
        if backlog(&js).await.values().all(|n| *n == 0) {
            caught_up = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let events = stored(&js).await.max(1) as f64;
    let run = LoopRun {
        rate: events / elapsed,
        at_end,
        caught_up,
        cycle: cycle_quantiles(&ports).await,
        server_us: (servers.cpu() - server_cpu) / events * 1e6,
        loop_us: (loop_cpu() - loop_cpu0) / events * 1e6,
        sim_us: sim_cpu / events * 1e6,
    };
    for p in &mut processes {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
    }
    for p in &mut processes {
        let _ = p.wait();
    }
    run.report(level, loops, raw);
}

/// What a run with the loop measured.
struct LoopRun {
    /// Telemetry stored per second while the mesh ran.
    rate: f64,
    /// Each durable reader's backlog when the mesh stopped.
    at_end: BTreeMap<String, u64>,
    /// How long after that every reader was at 0 behind, if it was within the limit.
    caught_up: Option<Duration>,
    /// The decision cycle's p50 and p99, if there were decisions.
    cycle: Option<(f64, f64)>,
    /// CPU per stored event, in microseconds: nats-server, the loop, the simulator.
    server_us: f64,
    loop_us: f64,
    sim_us: f64,
}

impl LoopRun {
    fn report(&self, level: Level, loops: usize, raw: &Raw) {
        let rate = self.rate;
        println!(
            "{}x{}, {loops} loop process(es): offered {:.0}/s; stored {rate:.0}/s with the loop, \
             {:.0}/s raw: ratio {:.2}",
            level.nodes,
            level.hz,
            level.offered(),
            raw.rate,
            rate / raw.rate
        );
        let behind: Vec<String> = self
            .at_end
            .iter()
            .map(|(reader, n)| format!("{reader} {n}"))
            .collect();
        println!("  behind when the mesh stopped: {}", behind.join(", "));
        match self.caught_up {
            Some(t) => println!("  every reader at 0 behind {:.1} s later", t.as_secs_f64()),
            None => println!("  not caught up within the drain limit"),
        }
        match self.cycle {
            Some((p50, p99)) => println!(
                "  decision cycle (telemetry event time to decision): p50 {}, p99 {}",
                bucket(p50),
                bucket(p99)
            ),
            None => println!("  decision cycle: no decisions"),
        }
        println!(
            "  CPU per stored event: nats-server {:.1} us (raw {:.1}), loop {:.1} us, sim {:.1} us \
         (raw {:.1})",
            self.server_us, raw.server_us, self.loop_us, self.sim_us, raw.sim_us
        );
    }
}

/// A histogram bucket's upper bound for people: `<= 0.05 s`, or past the last bucket.
fn bucket(le: f64) -> String {
    if le.is_finite() {
        format!("<= {le} s")
    } else {
        "past the last bucket (10 s)".to_owned()
    }
}

#[tokio::main]
async fn main() {
    let seconds = env_or("MAPEK_SCALE_SECONDS", 60);
    let counts = loop_counts();
    println!(
        "scale: {} server(s) ({}), {} partitions, loop processes {:?}, {seconds} s a level, \
         {} cores",
        env_or("MAPEK_SCALE_CLUSTER", 1),
        match std::env::var("MAPEK_SCALE_SYNC").as_deref() {
            Ok("default") => "the server's default sync",
            _ => "sync_interval: always",
        },
        env_or("MAPEK_SCALE_PARTITIONS", 8),
        counts,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for level in levels() {
        let raw = raw(level, seconds).await;
        for &loops in &counts {
            with_loop(level, seconds, &raw, loops).await;
        }
    }
}
