//! An operator scrapes a worker's /metrics while it works: events in and out per phase, step
//! and batch latencies and the consumer's lag are there, and they count what really happened.

use std::collections::BTreeMap;
use std::time::Duration;

use mapek_bus::Publisher;
use mapek_domain::{AnalyzeConfig, Analyzer, NodeId, Telemetry};
use mapek_loop::{StageConfig, run_stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T0: i64 = 1_795_867_200_000;

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response
}

/// The value of the sample line starting with `prefix`, or 0.
fn sample(page: &str, prefix: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_events_a_worker_handles() {
    let (_server, js) = mapek_testkit::server_with_streams().await;
    let (addr, _serving) = mapek_loop::metrics::serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let before = get(addr, "/metrics").await;
    assert!(before.starts_with("HTTP/1.1 200 OK"), "{before}");
    let in_before = sample(&before, "mapek_events_in_total{phase=\"monitor\"}");

    let mut publisher = Publisher::new(js.clone());
    for i in 0..50 {
        let metrics = BTreeMap::from([("latency_ms".to_owned(), 10.0)]);
        let t = Telemetry::new(NodeId::new("n1").unwrap(), T0 + i * 1000, metrics);
        publisher.publish(&t).await.unwrap();
    }
    assert!(publisher.finish().await.all_acked());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // n1's partition, as `mapek run` reads it.
    let partition = mapek_bus::layout::partition_of_node(
        &NodeId::new("n1").unwrap(),
        mapek_bus::layout::DEFAULT_PARTITIONS,
    );
    let mut config = StageConfig::new("analyze", Some(partition));
    config.fetch_wait = Duration::from_millis(100);
    let worker = tokio::spawn(run_stage(
        js.clone(),
        Analyzer::new(AnalyzeConfig::default()),
        config,
        mapek_bus::until_stopped(stopped),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = get(addr, "/metrics").await;
        if sample(&page, "mapek_events_in_total{phase=\"monitor\"}") - in_before >= 50.0 {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop.send(());
    worker.await.unwrap().unwrap();

    assert!(sample(&page, "mapek_step_seconds_count{phase=\"monitor\"}") >= 50.0);
    assert!(sample(&page, "mapek_batch_seconds_count{phase=\"monitor\"}") >= 1.0);
    assert!(
        page.contains(&format!(
            "mapek_consumer_pending{{consumer=\"analyze-p{partition}\",phase=\"monitor\"}} 0"
        )),
        "the consumer caught up: {page}"
    );
    assert!(page.contains("# TYPE mapek_cycle_seconds histogram"));
    assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
}
