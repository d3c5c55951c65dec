//! The read model's database goes away while the projection runs (its connections are
//! ended and new ones refused): the projection pauses, counts the failures, and once the
//! database is back it catches up with no gap and no double.

mod knowledge_log;

use std::time::{Duration, Instant};

use knowledge_log::{Projecting, assert_same_as_rebuild, projecting, publish_samples};
use mapek_domain::Phase;
use mapek_knowledge::ProjectionConfig;
use mapek_testkit::server_with_streams;

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_projection_pauses_while_postgres_is_away_and_catches_up() {
    let (_server, js) = server_with_streams().await;
    let config = ProjectionConfig {
        max_backoff: Duration::from_millis(400),
        batch: 50,
        telemetry_batch: 50,
        ..ProjectionConfig::default()
    };
    let Projecting {
        db,
        model,
        stats,
        stop,
        task,
    } = projecting(&js, config).await;
    let monitor = || stats.phase(Phase::Monitor).last_seq;

    publish_samples(&js, 0, 300, 11).await;
    wait_for("the first 300", Duration::from_secs(20), || {
        monitor() == 300
    })
    .await;
    assert_eq!(stats.phase(Phase::Monitor).store_failures, 0);

    db.cut_off().await;
    publish_samples(&js, 300, 500, 11).await;
    wait_for(
        "failures while Postgres is away",
        Duration::from_secs(20),
        || stats.phase(Phase::Monitor).store_failures >= 3,
    )
    .await;
    assert_eq!(
        monitor(),
        300,
        "nothing is committed while the store is away"
    );

    db.restore().await;
    wait_for("catching up", Duration::from_secs(30), || monitor() == 800).await;
    let _ = stop.send(());
    task.await.unwrap().expect("the projection ends cleanly");
    assert_eq!(
        stats.phase(Phase::Monitor).applied,
        800,
        "every sample applied once"
    );

    assert_same_as_rebuild(&js, &model).await;
}

#[tokio::test]
async fn the_projection_rides_through_a_restarted_nats_server() {
    let (mut server, js) = server_with_streams().await;
    let Projecting {
        db: _db,
        model,
        stats,
        stop,
        task,
    } = projecting(&js, ProjectionConfig::default()).await;
    let monitor = || stats.phase(Phase::Monitor).last_seq;
    publish_samples(&js, 0, 300, 11).await;
    wait_for("the first 300", Duration::from_secs(20), || {
        monitor() == 300
    })
    .await;

    // The server goes away long enough for the projection's reads to fail, then comes back
    // with its store.
    server.stop();
    wait_for("a failed read", Duration::from_secs(30), || {
        stats.phase(Phase::Monitor).log_failures >= 1
    })
    .await;
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.query_account().await.is_err() {
        assert!(Instant::now() < deadline, "JetStream is back within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish_samples(&js, 300, 200, 11).await;
    wait_for("catching up", Duration::from_secs(60), || monitor() == 500).await;
    assert!(!task.is_finished(), "the projection kept running");
    let _ = stop.send(());
    task.await.unwrap().expect("the projection ends cleanly");
    assert_eq!(stats.phase(Phase::Monitor).applied, 500);
    assert_same_as_rebuild(&js, &model).await;
}
