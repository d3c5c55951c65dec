//! A mesh sized for more than the default 8 partitions (ADR 0024): on a server whose mapping
//! puts telemetry into 32, `mapek demo` applies 32 to every phase, its workers take all 32,
//! and the log they write is proven by `mapek audit verify` and reproduced by `mapek replay
//! verify`. A mesh that outgrew 8 partitions grows to 32 under a running `mapek run`, its
//! history kept.

mod agent;
mod common;
mod replay_common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{interrupt, mapek, run, spawn, stderr, stdout, stream_len};
use mapek_bus::layout;
use mapek_domain::{NodeId, Phase};
use mapek_testkit::NatsServer;
use replay_common::{decisions, mapek_run};

const PARTITIONS: u32 = 32;

#[tokio::test]
async fn the_loop_on_32_partitions_decides_proves_and_replays() {
    // Given: a server that maps telemetry into 32 partitions.
    let mapping = mapek_domain::telemetry_mapping(PARTITIONS);
    let server = NatsServer::start_with_options(&mapping, &[], false);
    let url = server.url();

    // When: the demo runs its scripted faults there.
    let dir = tempfile::tempdir().unwrap();
    let mut demo = mapek(&url);
    demo.current_dir(dir.path())
        .args(["demo", "--nodes", "32", "--speed", "20"]);
    let out = run(demo);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));

    // Then: every phase has 32 partitions, and decisions were taken in partitions only a
    // count above 8 has, each stored under its node's partition of the 32.
    let js = mapek_bus::connect(&url).await.unwrap();
    for phase in [Phase::Monitor, Phase::Analyze, Phase::Plan, Phase::Execute] {
        assert_eq!(layout::partitions_of(&js, phase).await.unwrap(), PARTITIONS);
    }
    let plan = js.get_stream(Phase::Plan.stream()).await.unwrap();
    let mut decided = BTreeSet::new();
    for decision in decisions(&url) {
        let node = NodeId::new(decision["node"].as_str().unwrap()).unwrap();
        let p = layout::partition_of_node(&node, PARTITIONS);
        let subject = format!("mapek.plan.{p}.{node}");
        assert!(
            plan.get_last_raw_message_by_subject(&subject).await.is_ok(),
            "{subject} is not stored"
        );
        decided.insert(p);
    }
    assert!(
        decided.iter().any(|p| *p >= 8),
        "the faulted nodes are in partitions {decided:?}"
    );

    // And: the audit proves every decision and result, chain heads of all 32 included.
    let keys = dir.path().join("mapek-data/keys");
    let audit = mapek_run(
        &url,
        &[
            "audit",
            "verify",
            "--key",
            keys.join("decision.pub").to_str().unwrap(),
            "--result-key",
            keys.join("result.pub").to_str().unwrap(),
        ],
    );
    let report = stdout(&audit);
    assert!(audit.status.success(), "{report}\n{}", stderr(&audit));
    assert!(report.contains("0 fail, 0 missing"), "{report}");
    let chains = format!(
        "in {} partitions: {n} pass, 0 fail (signatures and links checked); {} signed chain \
         heads, 0 chains cut",
        decided.len(),
        decided.len(),
        n = decisions(&url).len()
    );
    assert!(report.contains(&chains), "{chains}\n{report}");

    // And: replay reproduces every symptom and decision.
    let replay = mapek_run(&url, &["replay", "verify"]);
    let said = stdout(&replay);
    assert!(replay.status.success(), "{said}\n{}", stderr(&replay));
    assert!(said.contains("verdict: identical"), "{said}");
}

/// `mapek sim` on 32 nodes for up to two minutes, `node` hogging its CPU from the third
/// second.
fn sim_with_a_cpu_hog(url: &str, node: &str) -> (Child, tempfile::NamedTempFile) {
    let mut faults = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        faults,
        "[[fault]]\nkind = \"cpu_hog\"\nstart_s = 3.0\nnode = \"{node}\"\n"
    )
    .unwrap();
    let mut sim = mapek(url);
    sim.args(["sim", "--nodes", "32", "--duration", "120s", "--faults"])
        .arg(faults.path());
    (spawn(sim), faults)
}

/// Waits until `what` holds, for up to 90 s.
async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How many telemetry samples of `node` the monitor streams hold, under any partition.
async fn samples_of(js: &mapek_bus::JetStream, node: &str) -> u64 {
    use futures::StreamExt;
    let mut total = 0;
    for stored in layout::streams_of(js, Phase::Monitor).await.unwrap() {
        let stream = js.get_stream(&stored.name).await.unwrap();
        let mut subjects = stream
            .info_with_subjects(format!("mapek.monitor.*.{node}"))
            .await
            .unwrap();
        while let Some(subject) = subjects.next().await {
            total += subject.unwrap().1 as u64;
        }
    }
    total
}

/// A server with the shipped layout (8 partitions over 2 monitor streams), its URL, and a
/// JetStream context on it.
async fn shipped_layout() -> (NatsServer, String, mapek_bus::JetStream) {
    let server = NatsServer::start();
    let url = server.url();
    let out = mapek_run(&url, &["streams", "apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let js = mapek_bus::connect(&url).await.unwrap();
    (server, url, js)
}

#[tokio::test]
async fn an_operator_grows_8_partitions_to_32_under_a_running_loop() {
    // Given: the shipped layout (8 partitions over 2 monitor streams) and a running loop that
    // decided on a CPU hog.
    let (server, url, js) = shipped_layout().await;
    let data = tempfile::tempdir().unwrap();
    let mut run_loop = mapek(&url);
    run_loop
        .args(["run", "--worker", "w", "--metrics-addr", "off"])
        .env("MAPEK_DATA_DIR", data.path());
    let the_loop = spawn(run_loop);
    // n7 is in partition 18 of 32 (2 of 8): only a grown loop decides on it there.
    let grown = NodeId::new("n7").unwrap();
    assert_eq!(layout::partition_of_node(&grown, 32), 18);
    let (mut sim, _faults) = sim_with_a_cpu_hog(&url, "n7");
    until("a decision on n7", || async {
        stream_len(&js, "MAPEK_PLAN").await >= 1
    })
    .await;
    let _ = sim.kill();
    let _ = sim.wait();
    let before = samples_of(&js, "n7").await;

    // When: the operator grows the streams to 32 partitions, then the server's mapping.
    let out = mapek_run(&url, &["streams", "apply", "--partitions", "32"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("partitions: 32; telemetry: the server maps it into 8 partitions")
            && text.contains("MAPEK_MONITOR_0: updated")
            && text.contains(&mapek_domain::telemetry_mapping(32)),
        "{text}"
    );
    // Until the mapping changes, an apply that names no count keeps the streams' 32.
    let between = mapek_run(&url, &["streams", "apply"]);
    assert!(
        between.status.success() && stdout(&between).contains("nothing changed"),
        "{}\n{}",
        stdout(&between),
        stderr(&between)
    );
    server.reload_with_mapping(&mapek_domain::telemetry_mapping(32));
    until("the server maps into 32", || async {
        mapek_bus::streams::server_mapping(&js).await.ok() == Some(Some(32))
    })
    .await;
    let again = mapek_run(&url, &["streams", "apply"]);
    assert!(
        stdout(&again).contains("nothing changed"),
        "{}",
        stdout(&again)
    );

    // Then: the running loop takes the new partitions without a restart...
    until("an analyze worker on partition 31", || async {
        mapek_bus::progress::lease_owners(&js)
            .await
            .contains_key("analyze.p31")
    })
    .await;
    // ... and decides on the hog again, now in its partition of the 32.
    let (mut sim, _faults) = sim_with_a_cpu_hog(&url, "n7");
    let plan = js.get_stream("MAPEK_PLAN").await.unwrap();
    until("a decision on n7 in partition 18", || async {
        plan.get_last_raw_message_by_subject("mapek.plan.18.n7")
            .await
            .is_ok()
    })
    .await;
    let _ = sim.kill();
    let _ = sim.wait();
    interrupt(the_loop);
    assert!(
        plan.get_last_raw_message_by_subject("mapek.plan.2.n7")
            .await
            .is_ok(),
        "the first decision stays in partition 2"
    );

    // And: n7's whole history, from before and after, is read as one.
    let all = samples_of(&js, "n7").await;
    assert!(all > before, "{all} samples after, {before} before");
    let read = common::subscribe_all(&url, "telemetry", &["--node", "n7"]);
    assert_eq!(read.len() as u64, all);

    // And: the audit proves the chains across the change, and replay reproduces both sides.
    let (passed, report) = common::audit_verify(&url, &[]);
    assert!(passed, "{report}");
    let replay = mapek_run(&url, &["replay", "verify"]);
    let said = stdout(&replay);
    assert!(replay.status.success(), "{said}\n{}", stderr(&replay));
    assert!(said.contains("verdict: identical"), "{said}");
}

/// `node`'s latency at 1 Hz from `t0`: five normal samples, then six at 500 ms, which the
/// analyzer opens a symptom on.
fn a_latency_spike(node: &str, t0: i64) -> Vec<mapek_domain::Telemetry> {
    (0..11)
        .map(|i| {
            let latency = if i < 5 { 10.0 } else { 500.0 };
            let metrics = std::collections::BTreeMap::from([("latency_ms".to_owned(), latency)]);
            mapek_domain::Telemetry::new(NodeId::new(node).unwrap(), t0 + i * 1_000, metrics)
        })
        .collect()
}

/// 40 rounds of normal samples of `nodes` at 1 Hz from `t0`: 20 000 for 500 nodes.
fn quiet_rounds(nodes: &[String], t0: i64) -> Vec<mapek_domain::Telemetry> {
    (0..40)
        .flat_map(|round| {
            nodes.iter().map(move |n| {
                let metrics = std::collections::BTreeMap::from([("latency_ms".to_owned(), 10.0)]);
                mapek_domain::Telemetry::new(NodeId::new(n).unwrap(), t0 + round * 1_000, metrics)
            })
        })
        .collect()
}

/// Stops `workers` and waits for each to end well.
async fn stop_all(workers: Vec<Running>) {
    for (stop, worker) in workers {
        let _ = stop.send(());
        worker.await.unwrap().unwrap();
    }
}

/// How many times the analyze workers of this test process read on without the partitions
/// theirs descend from.
fn analyze_waits_given_up() -> u64 {
    mapek_loop::metrics::ORDER_WAITS_GIVEN_UP
        .with_label_values(&["analyze"])
        .get()
}

/// A server grown from 8 partitions to 32 whose partition 2 holds, unread, 20 000 samples
/// of nodes that stay there and then a latency spike of n7 (2 of 8, 18 of 32), and whose
/// partition 18 holds a second spike of n7, from the time returned.
async fn n7_moved_behind_a_backlog() -> (NatsServer, String, mapek_bus::JetStream, i64) {
    let (server, url, js) = shipped_layout().await;
    let staying: Vec<String> = (0..)
        .map(|i| format!("m{i}"))
        .filter(|n| layout::partition_of_node(&NodeId::new(n).unwrap(), 32) == 2)
        .take(500)
        .collect();
    let t0 = mapek_testkit::samples::TS_MS;
    let mut backlog = quiet_rounds(&staying, t0);
    backlog.extend(a_latency_spike("n7", t0));
    agent::publish(&js, &backlog).await;
    let out = mapek_run(&url, &["streams", "apply", "--partitions", "32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    server.reload_with_mapping(&mapek_domain::telemetry_mapping(32));
    until("the server maps into 32", || async {
        mapek_bus::streams::server_mapping(&js).await.ok() == Some(Some(32))
    })
    .await;
    let second = t0 + 100_000;
    agent::publish(&js, &a_latency_spike("n7", second)).await;
    (server, url, js, second)
}

/// Analyze workers on `partitions` of `count`, as `mapek run` runs them; each stops when its
/// sender is dropped or sent to.
fn analyze_workers(js: &mapek_bus::JetStream, count: u32, partitions: &[u32]) -> Vec<Running> {
    partitions
        .iter()
        .map(|&p| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let config = mapek_loop::StageConfig::partition_of("analyze", p, count);
            let analyzer = mapek_domain::Analyzer::new(mapek_domain::AnalyzeConfig::default());
            let worker = tokio::spawn(mapek_loop::run_stage(js.clone(), analyzer, config, async {
                let _ = stopped.await;
            }));
            (stop, worker)
        })
        .collect()
}

/// A running analyze worker: the switch that stops it, and its task.
type Running = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<mapek_loop::StageStats, mapek_bus::BusError>>,
);

/// The times of n7's symptoms, in the order they are stored, once one of its spike from
/// `second` is stored.
async fn n7_symptom_times(url: &str, second: i64) -> Vec<i64> {
    until("a symptom of n7's second spike", || async {
        let symptoms = common::subscribe_all(url, "symptoms", &["--node", "n7"]);
        symptoms
            .iter()
            .any(|s| s["event"]["ts_ms"].as_i64() >= Some(second))
    })
    .await;
    let mut symptoms = common::subscribe_all(url, "symptoms", &["--node", "n7"]);
    symptoms.sort_by_key(|s| s["seq"].as_u64());
    symptoms
        .iter()
        .map(|s| s["event"]["ts_ms"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_node_moved_by_a_grown_count_is_analyzed_in_the_order_it_reported() {
    // Given: n7 moved from partition 2 to 18 by growing 8 partitions to 32, a spike of it in
    // each, 2's behind 20 000 samples.
    let (_server, url, js, second) = n7_moved_behind_a_backlog().await;

    // When: the analyze workers of partitions 0, 2 and 18 of the 32 start together.
    let workers = analyze_workers(&js, 32, &[0, 2, 18]);

    // Then: n7's symptoms are stored in the order it reported: the spike left in partition 2
    // before the one in 18, though 18 had 11 samples to read and 2 had 20 000.
    let times = n7_symptom_times(&url, second).await;
    stop_all(workers).await;
    assert!(times.first() < times.last(), "{times:?}");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "n7's symptoms in stored order have times {times:?}"
    );
}

#[tokio::test]
async fn a_moved_node_is_analyzed_after_the_wait_when_its_old_partition_has_no_reader() {
    // Given: n7 moved from partition 2 to 18, and nobody reading partition 2.
    let (_server, url, js, second) = n7_moved_behind_a_backlog().await;
    let before = analyze_waits_given_up();

    // When: only the workers of partitions 0 and 18 run.
    let started = Instant::now();
    let workers = analyze_workers(&js, 32, &[0, 18]);

    // Then: 18 reads n7's second spike once its wait is over, and counts that it gave up.
    let times = n7_symptom_times(&url, second).await;
    let waited = started.elapsed();
    stop_all(workers).await;
    assert!(times.iter().all(|t| *t >= second), "{times:?}");
    assert!(
        waited >= mapek_bus::progress::ORDER_WAIT,
        "read on after {waited:?}"
    );
    assert_eq!(analyze_waits_given_up(), before + 1);
}

#[tokio::test]
async fn a_partition_that_never_grew_waits_for_no_other() {
    // Given: the shipped 8 partitions, never grown, with 20 000 samples unread in partition 1
    // and a spike of a node of partition 3 (both in MAPEK_MONITOR_0).
    let (_server, url, js) = shipped_layout().await;
    let of = |partition: u32| {
        (0..)
            .map(|i| format!("m{i}"))
            .filter(move |n| layout::partition_of_node(&NodeId::new(n).unwrap(), 8) == partition)
    };
    let t0 = mapek_testkit::samples::TS_MS;
    let ones: Vec<String> = of(1).take(500).collect();
    agent::publish(&js, &quiet_rounds(&ones, t0)).await;
    let three = of(3).next().unwrap();
    agent::publish(&js, &a_latency_spike(&three, t0)).await;
    let before = analyze_waits_given_up();

    // When: only partition 3's worker runs.
    let started = Instant::now();
    let workers = analyze_workers(&js, 8, &[3]);

    // Then: it decides at once; partition 1 (which it would descend from, had the count
    // grown from 2 or 4) is not waited for.
    until("a symptom of the spike", || async {
        !common::subscribe_all(&url, "symptoms", &["--node", &three]).is_empty()
    })
    .await;
    let waited = started.elapsed();
    stop_all(workers).await;
    assert!(
        waited < mapek_bus::progress::ORDER_WAIT / 2,
        "read after {waited:?}"
    );
    assert_eq!(analyze_waits_given_up(), before);
}

#[tokio::test]
async fn a_reader_stopped_while_it_waits_for_order_gives_its_batch_back_at_once() {
    // Given: n7 moved from partition 2 to 18, nobody reading 2, and partition 18's worker
    // holding n7's second spike while it waits for 2.
    let (_server, _url, js, _second) = n7_moved_behind_a_backlog().await;
    let stream = layout::stream_for(&js, Phase::Monitor, Some(18))
        .await
        .unwrap();
    let stream = js.get_stream(&stream).await.unwrap();
    let workers = analyze_workers(&js, 32, &[18]);
    until("partition 18's worker holds its first batch", || async {
        let info = stream.consumer_info("analyze-p18").await;
        info.is_ok_and(|i| i.num_ack_pending > 0)
    })
    .await;

    // When: the worker is stopped during its wait (a restart, a handover).
    stop_all(workers).await;

    // Then: whoever reads partition 18 next gets the batch at once, not after its ack wait.
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("analyze-p18").await.unwrap();
    let asked = Instant::now();
    let mut again = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(8))
        .messages()
        .await
        .unwrap();
    let first = futures::StreamExt::next(&mut again).await;
    let first = first.expect("the batch is given back").unwrap();
    assert!(first.info().unwrap().delivered > 1, "a delivery again");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "given back after {:?}",
        asked.elapsed()
    );
}
