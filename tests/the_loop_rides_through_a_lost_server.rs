//! On a 3-node JetStream cluster with R3 streams, the loop runs in two `mapek run` processes
//! given every server's URL, while telemetry is published steadily. The server leading the
//! streams is killed (SIGKILL) and restarted, then another, and one loop process is killed
//! and restarted too. Nothing is lost and nothing doubled: every acknowledged telemetry event
//! is stored once, every opening symptom decided once, every decision acted on once, and
//! `mapek replay verify` reproduces every decision. And a single server restarted under load
//! keeps every event it acknowledged.

mod agent;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{apply_streams_r3, leader_of, mapek, run, stdout, subscribe_all};
use mapek_bus::{JetStream, Publisher};
use mapek_domain::{NodeId, Phase, Telemetry};
use mapek_testkit::NatsCluster;

const T0: i64 = 1_795_867_200_000;
const NODES: usize = 8;

/// A `mapek run` process, killed when dropped: a failed check leaves nothing running.
struct LoopProcess(Option<Child>);

impl std::ops::Deref for LoopProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for LoopProcess {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for LoopProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = (child.kill(), child.wait());
        }
    }
}

/// `mapek run` (every phase) as `name` on `url`, with stores of its own under `dir`.
fn loop_process(url: &str, name: &str, dir: &Path) -> LoopProcess {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = mapek(url)
        .args(["run", "--worker", name, "--metrics-addr", "off"])
        .env("MAPEK_DATA_DIR", dir.join(name))
        .env("MAPEK_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start mapek run");
    LoopProcess(Some(child))
}

/// Round `i` of telemetry: one sample per node, a second of event time apart. Each node in
/// turn has six slow samples out of every forty: an incident that opens and clears.
fn round(i: i64) -> Vec<Telemetry> {
    (0..NODES as i64)
        .map(|n| {
            let slow = (i + n * 5).rem_euclid(40) < 6;
            let latency = if slow { 500.0 } else { 10.0 + n as f64 };
            let metrics = BTreeMap::from([("latency_ms".to_owned(), latency)]);
            Telemetry::new(
                NodeId::new(format!("n{n}")).unwrap(),
                T0 + i * 1000,
                metrics,
            )
        })
        .collect()
}

/// Publishes rounds of telemetry every 50 ms until `stop`, each event retried until the server
/// acknowledges it; returns the ids acknowledged.
async fn publish_steadily(js: JetStream, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut publisher = Publisher::with_window(js, 1);
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        for event in round(i) {
            loop {
                let before = publisher.report().acked + publisher.report().duplicates;
                if publisher.publish(&event).await.is_ok() {
                    publisher.flush().await;
                    if publisher.report().acked + publisher.report().duplicates > before {
                        acked.push(event.event_id.clone());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acked
}

/// Events of `family` by the id field `key`, and how many times each is stored.
fn stored_ids(url: &str, family: &str, key: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for e in subscribe_all(url, family, &[]) {
        let id = e["event"][key].as_str().unwrap_or_default().to_owned();
        *ids.entry(id).or_default() += 1;
    }
    ids
}

/// How long the loop may make no progress at all (nothing less behind, no new result)
/// before waiting for it is given up, and the longest the whole catching up may take.
const STALLED: Duration = Duration::from_secs(60);
const CATCH_UP_AT_MOST: Duration = Duration::from_secs(300);

/// Waits until the loop has caught up: every decision has a result and nothing is behind.
/// A loop that still moves is given time (two cores shared by three servers, two loop
/// processes and the publisher catch up slowly after the kills); one that stalls is not.
/// Says how far it was when it gave up.
async fn wait_until_caught_up(js: &JetStream) -> Result<(), String> {
    let started = Instant::now();
    let mut moved = Instant::now();
    let mut last = None;
    let mut settled = 0;
    while settled < 3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let behind =
            mapek_bus::progress::behind(js, &[Phase::Monitor, Phase::Analyze, Phase::Plan])
                .await
                .unwrap_or(u64::MAX);
        let plan = common::stream_len(js, "MAPEK_PLAN").await;
        let results = common::stream_len(js, "MAPEK_EXECUTE").await;
        settled = if behind == 0 && plan > 0 && results >= plan {
            settled + 1
        } else {
            0
        };
        if last != Some((behind, plan, results)) {
            last = Some((behind, plan, results));
            moved = Instant::now();
        }
        let how_far = || format!("{behind} messages behind, {plan} decisions, {results} results");
        if moved.elapsed() > STALLED {
            return Err(format!("no progress for {STALLED:?}: {}", how_far()));
        }
        if started.elapsed() > CATCH_UP_AT_MOST {
            return Err(format!(
                "still behind after {CATCH_UP_AT_MOST:?}: {}",
                how_far()
            ));
        }
    }
    eprintln!(
        "the loop caught up {:?} after publishing stopped",
        started.elapsed()
    );
    Ok(())
}

/// The loop's state and the end of each loop process's log, to tell why it did not catch up.
fn what_the_loop_was_doing(url: &str, dir: &Path) -> String {
    let mut status = mapek(url);
    status.args(["status", "--loop"]);
    let mut out = stdout(&run(status));
    for name in ["loop-a", "loop-b"] {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        out.push_str(&format!("\n--- the end of {name}'s log:\n{tail}\n"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_loses_nothing_when_servers_and_a_worker_are_killed() {
    let mut cluster = NatsCluster::start(3);
    let url = cluster.url();
    apply_streams_r3(&url);
    let js = mapek_bus::connect(&url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _agent = agent::start_agent(&url).await;
    let mut a = loop_process(&url, "loop-a", dir.path());
    let mut b = loop_process(&url, "loop-b", dir.path());

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn(publish_steadily(js.clone(), stop.clone()));
    let pause = |s| tokio::time::sleep(Duration::from_secs(s));
    pause(6).await;

    let first = cluster
        .index_of(&leader_of(&js, "MAPEK_PLAN").await)
        .unwrap();
    cluster.kill(first);
    pause(3).await;
    a.kill().unwrap();
    a.wait().unwrap();
    pause(3).await;
    cluster.restart(first);
    a = loop_process(&url, "loop-a", dir.path());
    pause(6).await;
    let second = (first + 1) % cluster.len();
    cluster.kill(second);
    pause(6).await;
    cluster.restart(second);
    pause(5).await;
    stop.store(true, Ordering::Relaxed);
    let acked = publishing.await.unwrap();
    if let Err(how_far) = wait_until_caught_up(&js).await {
        let doing = what_the_loop_was_doing(&url, dir.path());
        panic!("the loop did not catch up: {how_far}\n{doing}");
    }

    for (name, child) in [("loop-a", &mut a), ("loop-b", &mut b)] {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{name} exited on its own: {}",
            std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap()
        );
    }
    let telemetry = stored_ids(&url, "telemetry", "event_id");
    for id in &acked {
        assert_eq!(telemetry.get(id), Some(&1), "acknowledged telemetry {id}");
    }
    assert!(
        telemetry.values().all(|n| *n == 1),
        "telemetry stored twice"
    );

    let opened: BTreeSet<String> = subscribe_all(&url, "symptoms", &[])
        .into_iter()
        .filter(|s| s["event"]["state"] == "open")
        .map(|s| s["event"]["symptom_id"].as_str().unwrap().to_owned())
        .collect();
    let decisions = stored_ids(&url, "decisions", "symptom_id");
    assert!(opened.len() >= NODES, "incidents opened: {}", opened.len());
    for id in &opened {
        assert_eq!(decisions.get(id), Some(&1), "opening symptom {id}");
    }
    let decided = stored_ids(&url, "decisions", "decision_id");
    let results = stored_ids(&url, "actions", "decision_id");
    assert_eq!(
        decided.keys().collect::<Vec<_>>(),
        results.keys().collect::<Vec<_>>()
    );
    assert!(
        results.values().all(|n| *n == 1),
        "a decision acted on twice"
    );

    let mut verify = mapek(&url);
    verify.args(["replay", "verify"]);
    let out = run(verify);
    assert!(
        stdout(&out).contains("verdict: identical"),
        "{}",
        stdout(&out)
    );
    stop_loop(a, "loop-a", dir.path());
    stop_loop(b, "loop-b", dir.path());
}

/// Stops a loop process as Ctrl-C would and checks that it ended well.
fn stop_loop(mut process: LoopProcess, name: &str, dir: &Path) {
    let child = process.0.take().expect("running");
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status();
    assert!(status.unwrap().success());
    let out = child.wait_with_output().unwrap();
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
    assert!(out.status.success(), "{name} failed: {log}");
}

#[tokio::test]
async fn a_single_server_restarted_under_load_keeps_every_acknowledged_event() {
    let (mut server, js) = mapek_testkit::server_with_streams().await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn(publish_steadily(js.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = publishing.await.unwrap();
    let stored = stored_ids(&server.url(), "telemetry", "event_id");
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "{} acknowledged events lost", lost.len());
    assert!(acked.len() > 100, "published under load: {}", acked.len());
}
