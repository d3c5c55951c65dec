//! As an operator sees it: the read model's database goes away under `mapek run --phase
//! project`. The process keeps running, its /metrics counts the projection's failed writes
//! while it waits, and once the database is back the read model catches up: the same rows as
//! a rebuild from the log.

mod common;
mod knowledge_log;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{interrupt, mapek};
use knowledge_log::{assert_same_as_rebuild, publish_samples};
use mapek_bus::layout;
use mapek_domain::Phase;
use mapek_knowledge::ReadModel;
use mapek_testkit::TestDatabase;
use mapek_testkit::nats::free_port;
use mapek_testkit::server_with_streams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FAILURES: &str = "mapek_projection_failures_total{projection=\"sql\"}";

/// The value of `name` on the process's /metrics page, or `None` if it is not there (yet).
async fn metric(port: u16, name: &str) -> Option<f64> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut page = String::new();
    socket.read_to_string(&mut page).await.ok()?;
    page.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn metrics_count_the_failures_while_the_database_is_away_and_the_model_catches_up() {
    let (server, js) = server_with_streams().await;
    let db = TestDatabase::create().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = mapek(&server.url())
        .args(["run", "--phase", "project", "--worker", "projector"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", db.url())
        .env("MAPEK_DATA_DIR", data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mapek run");
    let model = ReadModel::connect(db.url()).await.unwrap();
    // How many samples the read model has applied, summed over the monitor streams (each
    // stream's sequences count its own messages): `None` while the database is away.
    let applied = async || {
        let offsets = model.offsets().await.ok()?;
        let monitor: Vec<u64> = offsets
            .into_iter()
            .filter(|(stream, _)| layout::phase_of_stream(stream) == Some(Phase::Monitor))
            .map(|(_, seq)| seq)
            .collect();
        (!monitor.is_empty()).then(|| monitor.iter().sum::<u64>())
    };

    publish_samples(&js, 0, 70, 7).await;
    wait_for("the first samples in the read model", async || {
        (applied().await? == 70).then_some(())
    })
    .await;
    let before = wait_for("the failure counter on /metrics", async || {
        metric(port, FAILURES).await
    })
    .await;
    assert_eq!(before, 0.0, "no failure while the database is there");

    db.cut_off().await;
    publish_samples(&js, 70, 140, 7).await;
    let during = wait_for("failures counted on /metrics", async || {
        metric(port, FAILURES).await.filter(|n| *n >= 2.0)
    })
    .await;
    assert_eq!(applied().await, None, "the database is away");

    db.restore().await;
    publish_samples(&js, 210, 70, 7).await;
    wait_for("the read model to catch up", async || {
        (applied().await? == 280).then_some(())
    })
    .await;
    assert_same_as_rebuild(&js, &model).await;
    let after = metric(port, FAILURES).await.expect("still on /metrics");
    assert!(
        after >= during,
        "a counter never goes back: {after} < {during}"
    );

    let err = interrupt(child);
    assert!(
        err.contains("the SQL read model: 280 events written"),
        "{err}"
    );
}
