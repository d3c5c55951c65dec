//! The same event id published twice is stored once: a retried run doubles nothing.

mod common;

use common::{mapek, run_with_input, stderr, stdout, telemetry_len};
use mapek_bus::Publisher;
use mapek_testkit::samples;
use mapek_testkit::server_with_streams;

#[tokio::test]
async fn the_library_stores_a_republished_event_once() {
    let (_server, js) = server_with_streams().await;
    let event = samples::telemetry("n1", samples::TS_MS, 12.5);
    let mut publisher = Publisher::new(js.clone());
    publisher.publish(&event).await.unwrap();
    publisher.publish(&event).await.unwrap();
    let report = publisher.finish().await;
    assert_eq!((report.sent, report.acked, report.duplicates), (2, 1, 1));
    assert!(report.all_acked());
    assert_eq!(telemetry_len(&js).await, 1);
}

#[tokio::test]
async fn a_retried_cli_run_stores_nothing_twice() {
    let (server, js) = server_with_streams().await;
    let input: String = (0..200)
        .map(|i| {
            format!(
                "{{\"node\":\"n{}\",\"ts_ms\":{},\"metrics\":{{\"latency_ms\":{i}}}}}\n",
                i % 7,
                samples::TS_MS + i
            )
        })
        .collect();
    let mut first = mapek(&server.url());
    first.arg("publish");
    let out = run_with_input(first, input.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));

    let mut again = mapek(&server.url());
    again.arg("publish");
    let out = run_with_input(again, input.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("published 200 events: 0 stored, 200 duplicates"),
        "{}",
        stdout(&out)
    );
    assert_eq!(telemetry_len(&js).await, 200);
}
