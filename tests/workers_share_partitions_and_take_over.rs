//! Two analyze workers share the partitions of the monitor stream: every symptom is stored
//! once, and when one worker dies the other takes its partitions over and misses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use mapek_bus::{JetStream, Publisher, Subscriber, SubscriberConfig};
use mapek_domain::{AnalyzeConfig, Analyzer, NodeId, Symptom, Telemetry};
use mapek_loop::lease::run_partitioned;

const T0: i64 = 1_795_867_200_000;
const NODES: usize = 16;
const TTL: Duration = Duration::from_millis(1500);

/// Every node at 1 Hz from second `from` to `to`; odd nodes have high latency in 5..11.
fn telemetry(from: i64, to: i64) -> Vec<Telemetry> {
    let mut out = Vec::new();
    for i in from..to {
        for n in 0..NODES {
            let high = n % 2 == 1 && (5..11).contains(&i);
            let metrics =
                BTreeMap::from([("latency_ms".to_owned(), if high { 400.0 } else { 10.0 })]);
            let node = NodeId::new(format!("n{n}")).unwrap();
            out.push(Telemetry::new(node, T0 + i * 1000, metrics));
        }
    }
    out
}

/// What one analyzer per node would emit: no symptom here depends on other nodes.
fn expected(telemetry: &[Telemetry]) -> Vec<String> {
    let mut analyzer = Analyzer::new(AnalyzeConfig::default());
    let mut ids: Vec<String> = telemetry
        .iter()
        .flat_map(|t| analyzer.step(t))
        .map(|s| s.symptom_id)
        .collect();
    ids.sort();
    ids
}

async fn publish(js: &JetStream, events: &[Telemetry]) {
    let mut publisher = Publisher::new(js.clone());
    for e in events {
        publisher.publish(e).await.unwrap();
    }
    assert!(publisher.finish().await.all_acked());
}

fn worker(
    js: &JetStream,
    owner: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<mapek_loop::StageStats, mapek_bus::BusError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_partitioned(
        js.clone(),
        "analyze",
        8,
        owner.to_owned(),
        TTL,
        |_| Analyzer::new(AnalyzeConfig::default()),
        mapek_bus::until_stopped(stopped),
    ));
    (stop, task)
}

async fn stored_symptom_ids(js: &JetStream, want: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut sub = Subscriber::<Symptom>::open(js, SubscriberConfig::all())
            .await
            .unwrap();
        let n = sub.pending_at_start();
        if n as usize >= want || tokio::time::Instant::now() > deadline {
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.push(sub.next().await.unwrap().unwrap().event.unwrap().symptom_id);
            }
            // Give a straggler the chance to show up as a duplicate before we compare.
            tokio::time::sleep(Duration::from_millis(300)).await;
            ids.sort();
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_workers_split_the_partitions_and_a_survivor_takes_over() {
    let (_server, js) = mapek_testkit::server_with_streams().await;

    let (stop_a, a) = worker(&js, "worker-a");
    let (stop_b, b) = worker(&js, "worker-b");
    let first = telemetry(0, 9);
    publish(&js, &first).await;
    let want = expected(&first);
    assert!(!want.is_empty());
    assert_eq!(stored_symptom_ids(&js, want.len()).await, want);
    // Whoever started first took every partition; within a few renewals they split evenly.
    let leases = js.get_key_value("MAPEK_LEASES").await.unwrap();
    let even = BTreeMap::from([("worker-a".to_owned(), 4), ("worker-b".to_owned(), 4)]);
    let mut owners = BTreeMap::new();
    for _ in 0..50 {
        owners.clear();
        for p in 0..8 {
            if let Some(owner) = leases.get(format!("analyze.p{p}")).await.unwrap() {
                *owners
                    .entry(String::from_utf8(owner.to_vec()).unwrap())
                    .or_insert(0) += 1;
            }
        }
        if owners == even {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(owners, even, "the partitions are split evenly");

    // Worker a dies without a word: its leases expire and b takes its partitions.
    a.abort();
    drop(stop_a);
    let all = telemetry(0, 40);
    publish(&js, &all[first.len()..]).await;
    let want = expected(&all);
    assert_eq!(
        stored_symptom_ids(&js, want.len()).await,
        want,
        "every symptom once, none lost in the takeover"
    );

    stop_b.send(()).unwrap();
    let b = b.await.unwrap().unwrap();
    assert!(b.processed > 0 && b.processed < all.len() as u64 + 1);
}
