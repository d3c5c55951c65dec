//! Nodes that report ten times within half a second cost the live read model a row each per
//! telemetry batch, and a batch waits up to a second (its linger) for more samples: the
//! projection writes a handful of transactions where, without the linger, it writes one per
//! report, and every node still ends with its latest sample.

mod agent;
mod knowledge_log;

use std::time::{Duration, Instant};

use agent::publish;
use knowledge_log::{Projecting, projecting, telemetry};
use mapek_domain::{Phase, Telemetry};
use mapek_knowledge::{ProjectionConfig, ProjectionStats};
use mapek_testkit::samples::TS_MS;
use mapek_testkit::server_with_streams;

const NODES: usize = 20;
const ROUNDS: i64 = 10;

/// Every node once, at round `round`.
fn round(round: i64) -> Vec<Telemetry> {
    (0..NODES)
        .map(|n| telemetry(&format!("n{n}"), TS_MS + round * 100, 0.5, None))
        .collect()
}

async fn until_applied(stats: &ProjectionStats, n: u64) {
    let start = Instant::now();
    while stats.phase(Phase::Monitor).applied < n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not applied in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Projects live with `linger` while the mesh reports `ROUNDS` times, 40 ms apart; returns
/// the telemetry transactions written for those reports, after checking every node's row.
async fn transactions_for_busy_nodes(linger: Duration) -> u64 {
    let (_server, js) = server_with_streams().await;
    let config = ProjectionConfig {
        telemetry_linger: linger,
        ..ProjectionConfig::default()
    };
    let Projecting {
        db: _db,
        model,
        stats,
        stop,
        task,
    } = projecting(&js, config).await;
    // The first round, alone: once it is in, the projection is following the stream live.
    publish(&js, &round(0)).await;
    until_applied(&stats, NODES as u64).await;
    let before = stats.phase(Phase::Monitor).batches;
    for r in 1..ROUNDS {
        publish(&js, &round(r)).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    until_applied(&stats, NODES as u64 * ROUNDS as u64).await;
    let written = stats.phase(Phase::Monitor).batches - before;
    let snapshot = model.snapshot().await.unwrap();
    let latest = format!("| {} |", TS_MS + (ROUNDS - 1) * 100);
    let rows: Vec<&String> = snapshot
        .iter()
        .filter(|r| r.starts_with("nodes: "))
        .collect();
    assert_eq!(rows.len(), NODES, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.contains(&latest)),
        "every node holds its latest sample: {rows:?}"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    written
}

#[tokio::test]
async fn nodes_reporting_ten_times_within_the_linger_cost_a_few_transactions() {
    let lingering = transactions_for_busy_nodes(ProjectionConfig::default().telemetry_linger).await;
    let at_once = transactions_for_busy_nodes(Duration::ZERO).await;
    // Two monitor streams: a batch or two each while lingering; a batch per report each
    // without (some may meet in one).
    assert!(
        lingering <= 4,
        "{lingering} transactions for 9 reports of every node within the linger"
    );
    assert!(
        at_once >= 9,
        "{at_once} transactions without the linger: each report is written on its own"
    );
}
