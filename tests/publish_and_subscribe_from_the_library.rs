//! A node agent publishes with `Publisher` and an operator's tool follows with `Subscriber`;
//! every event type crosses a real server and comes back equal.

mod common;

use std::time::Duration;

use common::{stream_len, telemetry_len};
use mapek_bus::{Publisher, StartAt, Subscriber, SubscriberConfig};
use mapek_codec::AvroEvent;
use mapek_domain::{Rejected, ShadowDecision, Telemetry};
use mapek_testkit::samples;
use mapek_testkit::server_with_streams;

async fn round_trip<E: AvroEvent + PartialEq + std::fmt::Debug + Clone>(
    js: &mapek_bus::JetStream,
    event: E,
) {
    let mut publisher = Publisher::new(js.clone());
    publisher.publish(&event).await.unwrap();
    let report = publisher.finish().await;
    assert_eq!((report.sent, report.acked), (1, 1), "{}", E::SCHEMA);

    let mut subscriber = Subscriber::<E>::open(
        js,
        SubscriberConfig {
            node: Some(event.node().clone()),
            start: StartAt::All,
        },
    )
    .await
    .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(5), subscriber.next())
        .await
        .expect("the event comes back")
        .unwrap()
        .unwrap();
    assert_eq!(received.event.unwrap(), event, "{}", E::SCHEMA);
}

#[tokio::test]
async fn every_event_type_round_trips_through_jetstream() {
    let (_server, js) = server_with_streams().await;
    round_trip(&js, samples::telemetry("n1", samples::TS_MS, 12.5)).await;
    round_trip(&js, samples::symptom()).await;
    round_trip(&js, samples::decision()).await;
    round_trip(&js, samples::action_result()).await;
    round_trip(&js, samples::outcome()).await;
    round_trip(&js, ShadowDecision(samples::decision())).await;
    round_trip::<Rejected>(&js, samples::rejected()).await;
    assert_eq!(telemetry_len(&js).await, 1);
    for (stream, n) in [
        ("MAPEK_ANALYZE", 1),
        ("MAPEK_PLAN", 1),
        ("MAPEK_EXECUTE", 1),
        ("MAPEK_KNOWLEDGE", 1),
        ("MAPEK_SHADOW", 1),
        ("MAPEK_DLQ", 1),
    ] {
        assert_eq!(stream_len(&js, stream).await, n, "{stream}");
    }
}

#[tokio::test]
async fn a_pipelined_run_of_thousands_is_all_acknowledged_in_order() {
    let (_server, js) = server_with_streams().await;
    let mut publisher = Publisher::with_window(js.clone(), 64);
    for i in 0..5_000 {
        let t = samples::telemetry(&format!("n{}", i % 50), samples::TS_MS + i, i as f64);
        publisher.publish(&t).await.unwrap();
    }
    let report = publisher.finish().await;
    assert!(report.all_acked(), "{report:?}");
    assert_eq!(report.acked, 5_000);
    assert_eq!(telemetry_len(&js).await, 5_000);

    // Per node, the subscriber sees the node's events in publish order.
    let mut subscriber =
        Subscriber::<Telemetry>::open(&js, SubscriberConfig::node(samples::node("n7")))
            .await
            .unwrap();
    assert_eq!(subscriber.pending_at_start(), 100);
    let mut last = i64::MIN;
    for _ in 0..100 {
        let t = subscriber.next().await.unwrap().unwrap().event.unwrap();
        assert_eq!(t.node.as_str(), "n7");
        assert!(t.ts_ms > last);
        last = t.ts_ms;
    }
}

#[tokio::test]
async fn acks_that_never_come_are_counted_not_hidden() {
    // No streams: nothing stores mapek.monitor.>, so no publish is acknowledged.
    let server = mapek_testkit::NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    let mut publisher = Publisher::new(js);
    publisher
        .publish(&samples::telemetry("n1", samples::TS_MS, 1.0))
        .await
        .unwrap();
    let report = publisher.finish().await;
    assert!(!report.all_acked());
    assert_eq!(report.failed, 1);
    assert!(
        report.failures[0].1.contains("mapek streams apply"),
        "{report:?}"
    );
}

#[tokio::test]
async fn acks_withheld_for_many_events_cost_one_wait_not_one_per_event() {
    // A subscriber that takes every telemetry publish and never answers, as a stream does
    // while it elects a leader: no ack comes, and no "no responders" either.
    let server = mapek_testkit::NatsServer::start();
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    let _silent = js.client().subscribe("mapek.monitor.>").await.unwrap();
    js.client().flush().await.unwrap();
    let mut publisher = Publisher::new(js);
    for i in 0..20 {
        let t = samples::telemetry(&format!("n{i}"), samples::TS_MS, 1.0);
        publisher.publish(&t).await.unwrap();
    }

    // Waited one after another, 20 withheld acks would take 20 waits.
    let within = 3 * mapek_bus::publisher::ACK_WAIT;
    let report = tokio::time::timeout(within, publisher.finish())
        .await
        .expect("the run ends within a few ack waits, not one per event");
    assert_eq!((report.sent, report.failed), (20, 20), "{report:?}");
    assert!(
        report.failures[0].1.contains("no ack before the timeout"),
        "{report:?}"
    );
}
