//! The analyze worker turns telemetry on the monitor stream into symptoms on the analyze
//! stream, and a worker stopped mid-stream and restarted emits every symptom exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use mapek_bus::{JetStream, Publisher, Subscriber, SubscriberConfig};
use mapek_domain::{AnalyzeConfig, Analyzer, NodeId, Symptom, SymptomState, Telemetry};
use mapek_loop::{StageConfig, StageStats, run_stage};
use mapek_testkit::NatsServer;

const T0: i64 = 1_795_867_200_000;

/// n1 at 1 Hz: 5 normal samples, 6 at 500 ms, then 30 normal; n2 normal throughout.
fn telemetry() -> Vec<Telemetry> {
    let mut out = Vec::new();
    for i in 0..41 {
        let n1_latency = if (5..11).contains(&i) { 500.0 } else { 10.0 };
        for (node, latency) in [("n1", n1_latency), ("n2", 12.0)] {
            let metrics = BTreeMap::from([("latency_ms".to_owned(), latency)]);
            out.push(Telemetry::new(
                NodeId::new(node).unwrap(),
                T0 + i * 1000,
                metrics,
            ));
        }
    }
    out
}

fn expected(telemetry: &[Telemetry]) -> Vec<Symptom> {
    let mut analyzer = Analyzer::new(AnalyzeConfig::default());
    telemetry.iter().flat_map(|t| analyzer.step(t)).collect()
}

/// A server that keeps telemetry in one stream: these tests run one analyze worker over all
/// of it (no partitions), whose symptoms come in the pure analyzer's order. Workers by
/// partition, on the split layout, are proven in workers_share_partitions_and_take_over.rs.
async fn setup() -> (NatsServer, JetStream) {
    mapek_testkit::server_with_one_telemetry_stream().await
}

async fn publish(js: &JetStream, events: &[Telemetry]) {
    let mut publisher = Publisher::new(js.clone());
    for e in events {
        publisher.publish(e).await.unwrap();
    }
    assert!(publisher.finish().await.all_acked());
}

/// A running analyze worker over all telemetry: the switch that stops it, and its task.
type Worker = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<StageStats, mapek_bus::BusError>>,
);

/// Starts an analyze worker over all telemetry with `config`.
fn start_worker(js: &JetStream, config: StageConfig) -> Worker {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(run_stage(
        js.clone(),
        Analyzer::new(AnalyzeConfig::default()),
        config,
        async {
            let _ = stop_rx.await;
        },
    ));
    (stop_tx, worker)
}

/// Runs a worker until its consumer has acknowledged everything stored so far.
async fn run_until_caught_up(js: &JetStream) -> StageStats {
    let mut config = StageConfig::new("analyze", None);
    config.fetch_wait = Duration::from_millis(100);
    let (stop_tx, worker) = start_worker(js, config);
    let stored = js
        .get_stream("MAPEK_MONITOR")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let floor = match js
            .get_stream("MAPEK_MONITOR")
            .await
            .unwrap()
            .consumer_info("analyze")
            .await
        {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(_) => 0,
        };
        if floor >= stored {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker stuck at {floor} of {stored}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(()).unwrap();
    worker.await.unwrap().unwrap()
}

async fn stored_symptoms(js: &JetStream) -> Vec<Symptom> {
    let mut sub = Subscriber::<Symptom>::open(js, SubscriberConfig::all())
        .await
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..sub.pending_at_start() {
        out.push(sub.next().await.unwrap().unwrap().event.unwrap());
    }
    out
}

#[tokio::test]
async fn high_latency_opens_an_incident_and_its_end_resolves_it() {
    let (_server, js) = setup().await;
    let telemetry = telemetry();
    publish(&js, &telemetry).await;
    let stats = run_until_caught_up(&js).await;
    assert_eq!(stats.processed, telemetry.len() as u64);
    assert!(stats.emitted >= 2);

    let symptoms = stored_symptoms(&js).await;
    assert_eq!(
        symptoms,
        expected(&telemetry),
        "the worker emits what the pure analyzer does"
    );
    let states: Vec<(&str, SymptomState)> = symptoms
        .iter()
        .map(|s| (s.node.as_str(), s.state))
        .collect();
    assert_eq!(states.first(), Some(&("n1", SymptomState::Open)));
    assert_eq!(states.last(), Some(&("n1", SymptomState::Resolve)));
    assert!(
        symptoms.iter().all(|s| s.node.as_str() == "n1"),
        "n2 stayed healthy"
    );
}

#[tokio::test]
async fn a_worker_restarted_mid_incident_emits_every_symptom_once() {
    let (_server, js) = setup().await;
    let telemetry = telemetry();
    // Stop after the incident opened, before it resolved.
    let (first, second) = telemetry.split_at(30);
    publish(&js, first).await;
    let before = run_until_caught_up(&js).await;
    assert_eq!((before.replayed, before.processed), (0, 30));

    publish(&js, second).await;
    let after = run_until_caught_up(&js).await;
    assert_eq!(
        after.replayed, 30,
        "the restarted worker rebuilt its state from the log"
    );
    assert_eq!(after.processed, second.len() as u64);

    let symptoms = stored_symptoms(&js).await;
    assert_eq!(
        symptoms,
        expected(&telemetry),
        "no symptom doubled, none missing"
    );
    assert!(symptoms.iter().any(|s| s.state == SymptomState::Resolve));
}

#[tokio::test]
async fn malformed_telemetry_is_dead_lettered_and_the_loop_goes_on() {
    let (_server, js) = setup().await;
    let telemetry = telemetry();
    let (first, second) = telemetry.split_at(10);
    publish(&js, first).await;
    for junk in [&b"not avro"[..], &[0xC3, 0x01, 1, 2, 3]] {
        js.publish("mapek.monitor.n1", bytes::Bytes::copy_from_slice(junk))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    publish(&js, second).await;
    run_until_caught_up(&js).await;

    assert_eq!(stored_symptoms(&js).await, expected(&telemetry));
    let dlq = js
        .get_stream("MAPEK_DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dlq, 2);
}

/// The analyze consumer's ack floor and the messages delivered and not acknowledged.
async fn floor_and_unacked(js: &JetStream) -> (u64, usize) {
    match js
        .get_stream("MAPEK_MONITOR")
        .await
        .unwrap()
        .consumer_info("analyze")
        .await
    {
        Ok(info) => (info.ack_floor.stream_sequence, info.num_ack_pending),
        Err(_) => (0, 0),
    }
}

#[tokio::test]
async fn a_worker_acknowledges_a_run_of_inputs_once_their_symptoms_are_stored_and_all_of_it_when_stopped()
 {
    let (_server, js) = setup().await;
    let telemetry = telemetry();
    publish(&js, &telemetry).await;
    let n = telemetry.len();

    // Acks only every 1 000 inputs or after an hour: nothing is acknowledged while it runs…
    let mut config = StageConfig::new("analyze", None);
    config.fetch_wait = Duration::from_secs(3600);
    config.ack_every = 1000;
    config.ack_after = Duration::from_secs(3600);
    let (stop_tx, worker) = start_worker(&js, config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while floor_and_unacked(&js).await != (0, n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            floor_and_unacked(&js).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …though every symptom it found is already stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stored_symptoms(&js).await.len() < expected(&telemetry).len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "symptoms not stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        floor_and_unacked(&js).await,
        (0, n),
        "nothing acknowledged yet"
    );

    // Stopped, it acknowledges everything it did: the next worker has nothing to redo.
    stop_tx.send(()).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(stats.processed, n as u64);
    assert_eq!(floor_and_unacked(&js).await, (n as u64, 0));
    let again = run_until_caught_up(&js).await;
    assert_eq!((again.replayed, again.processed), (n as u64, 0));
    assert_eq!(stored_symptoms(&js).await, expected(&telemetry));
}

#[tokio::test]
async fn a_worker_acknowledges_what_it_did_as_soon_as_no_more_input_waits() {
    let (_server, js) = setup().await;
    let telemetry = telemetry();
    // Acks every 1 000 inputs or after an hour, or when the input runs dry.
    let mut config = StageConfig::new("analyze", None);
    config.ack_every = 1000;
    config.ack_after = Duration::from_secs(3600);
    config.fetch_wait = Duration::from_millis(100);
    let (stop_tx, worker) = start_worker(&js, config);
    publish(&js, &telemetry).await;
    let n = telemetry.len() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while floor_and_unacked(&js).await != (n, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            floor_and_unacked(&js).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(()).unwrap();
    assert_eq!(worker.await.unwrap().unwrap().processed, n);
}

#[tokio::test]
async fn a_worker_whose_symptoms_cannot_be_stored_stops_and_acknowledges_none_of_their_causes() {
    let (_server, js) = setup().await;
    let telemetry = telemetry();
    publish(&js, &telemetry).await;
    // The stream that stores symptoms is gone.
    js.delete_stream("MAPEK_ANALYZE").await.unwrap();

    let mut config = StageConfig::new("analyze", None);
    config.fetch_wait = Duration::from_millis(100);
    let (_stop, worker) = start_worker(&js, config);
    let err = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops by itself")
        .unwrap()
        .expect_err("its symptoms could not be stored")
        .to_string();
    assert!(
        err.contains("mapek.analyze.")
            && err.contains("were not stored")
            && err.contains("run `mapek streams apply`"),
        "{err}"
    );
    // The telemetry that caused the first symptom (and everything after it) is delivered
    // again to the next worker.
    let first = &expected(&telemetry)[0];
    let cause_seq = 1 + telemetry
        .iter()
        .position(|t| t.event_id == first.caused_by)
        .unwrap() as u64;
    let (floor, _) = floor_and_unacked(&js).await;
    assert!(
        floor < cause_seq,
        "acknowledged through {floor}, the cause is {cause_seq}"
    );
}
