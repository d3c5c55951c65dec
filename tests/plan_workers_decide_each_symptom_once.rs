//! Two plan workers share the analyze stream's partitions: every decision is stored exactly
//! once, the same as one planner per partition would take, and when one worker is killed
//! mid-stream the other takes over without a duplicate or a gap.

use std::collections::BTreeMap;
use std::time::Duration;

use mapek_bus::{JetStream, Publisher, Subscriber, SubscriberConfig};
use mapek_domain::plan::NoKnowledge;
use mapek_domain::{
    AnalyzeConfig, Analyzer, Decision, NodeId, Planner, Policy, Symptom, Telemetry,
};
use mapek_loop::lease::run_partitioned;
use mapek_loop::plan::PlanStage;

const T0: i64 = 1_795_867_200_000;

/// Symptoms of 24 nodes: every third node's loss goes up for a while, at staggered times.
fn symptoms(from: i64, to: i64) -> Vec<Symptom> {
    let mut analyzer = Analyzer::new(AnalyzeConfig::default());
    let mut out = Vec::new();
    for i in 0..to {
        for n in 0..24 {
            let start = 3 + (n % 5) as i64;
            let lossy = n % 3 == 0 && (start..start + 8).contains(&i);
            let metrics = BTreeMap::from([("loss".to_owned(), if lossy { 0.3 } else { 0.0 })]);
            let t = Telemetry::new(
                NodeId::new(format!("n{n}")).unwrap(),
                T0 + i * 1000,
                metrics,
            );
            let found = analyzer.step(&t);
            if i >= from {
                out.extend(found);
            }
        }
    }
    out
}

async fn publish<E: mapek_codec::AvroEvent>(js: &JetStream, events: &[E]) {
    let mut publisher = Publisher::new(js.clone());
    for e in events {
        publisher.publish(e).await.unwrap();
    }
    assert!(publisher.finish().await.all_acked());
}

/// Reads every stored event of `E`'s family with its stored subject.
async fn stored<E: mapek_codec::AvroEvent>(js: &JetStream) -> Vec<(String, E)> {
    let config = SubscriberConfig::all();
    let mut sub = Subscriber::<E>::open(js, config).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..sub.pending_at_start() {
        let r = sub.next().await.unwrap().unwrap();
        out.push((r.subject, r.event.unwrap()));
    }
    out
}

/// What one planner per partition decides over the stored symptoms, in stream order.
async fn expected(js: &JetStream) -> Vec<String> {
    let mut planners: BTreeMap<String, Planner> = BTreeMap::new();
    let mut ids = Vec::new();
    for (subject, symptom) in stored::<Symptom>(js).await {
        let partition = subject.split('.').nth(2).unwrap().to_owned();
        let planner = planners
            .entry(partition)
            .or_insert_with(|| Planner::new(Policy::builtin()));
        ids.extend(
            planner
                .decide(&symptom, &NoKnowledge)
                .map(|d| d.decision_id),
        );
    }
    ids.sort();
    ids
}

async fn decision_ids(js: &JetStream, want: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = stored::<Decision>(js).await;
        if all.len() >= want || tokio::time::Instant::now() > deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut ids: Vec<String> = stored::<Decision>(js)
                .await
                .into_iter()
                .map(|(_, d)| d.decision_id)
                .collect();
            ids.sort();
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        "plan",
        8,
        owner.to_owned(),
        Duration::from_millis(1500),
        |_| PlanStage::without_knowledge(Policy::builtin()),
        mapek_bus::until_stopped(stopped),
    ));
    (stop, task)
}

#[tokio::test]
async fn two_plan_workers_take_each_decision_once_and_survive_a_kill() {
    let (_server, js) = mapek_testkit::server_with_streams().await;
    let all = symptoms(0, 40);
    let first = symptoms(0, 6);

    let (stop_a, a) = worker(&js, "plan-a");
    let (stop_b, b) = worker(&js, "plan-b");
    publish(&js, &first).await;
    let want = expected(&js).await;
    assert!(!want.is_empty());
    assert_eq!(decision_ids(&js, want.len()).await, want);

    // Kill a mid-stream; b takes its partitions over.
    a.abort();
    drop(stop_a);
    publish(&js, &all[first.len()..]).await;
    let want = expected(&js).await;
    assert!(want.len() > 2, "{want:?}");
    assert_eq!(
        decision_ids(&js, want.len()).await,
        want,
        "each decision once, none lost in the takeover"
    );
    stop_b.send(()).unwrap();
    b.await.unwrap().unwrap();
}
