//! A worker's inbox dead-letters every message it cannot decode or validate, with the reason
//! and the original bytes, and hands on every good message around them, in order.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use common::{stream_len, telemetry_len};
use mapek_bus::{Inbox, InboxConfig, Subscriber, SubscriberConfig};
use mapek_codec::encode;
use mapek_domain::{NodeId, Rejected, Telemetry};
use mapek_testkit::samples;
use mapek_testkit::server_with_streams;

async fn raw(js: &mapek_bus::JetStream, subject: &str, headers: HeaderMap, body: Vec<u8>) {
    js.publish_with_headers(subject.to_owned(), headers, Bytes::from(body))
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn each_bad_message_becomes_a_dead_letter_and_the_good_ones_flow_on() {
    let (_server, js) = server_with_streams().await;
    let good = |i: i64| samples::telemetry("n1", samples::TS_MS + i, i as f64);
    let avro = encode(&good(0)).unwrap();
    let mut unknown_fp = avro.clone();
    unknown_fp[2..10].copy_from_slice(&[9; 8]);
    let mut json = HeaderMap::new();
    json.insert("Content-Type", "application/json");

    let bad: Vec<(HeaderMap, Vec<u8>, &str)> = vec![
        (
            HeaderMap::new(),
            avro[..avro.len() - 3].to_vec(),
            "Telemetry/2 body does not decode",
        ),
        (
            HeaderMap::new(),
            unknown_fp,
            "unknown schema fingerprint 0909090909090909",
        ),
        (
            HeaderMap::new(),
            b"hello".to_vec(),
            "not an Avro single-object message",
        ),
        (
            HeaderMap::new(),
            encode(&samples::outcome()).unwrap(),
            "expected a Telemetry message, found Outcome",
        ),
        (
            json.clone(),
            br#"{"event_id":"e","node":"n1","ts_ms":1,"metrics":{"cpu":"hot"}}"#.to_vec(),
            "JSON Telemetry does not fit its schema",
        ),
        (
            json.clone(),
            br#"{"event_id":"e","node":"n1","metrics":{}}"#.to_vec(),
            "missing field `ts_ms`",
        ),
        (
            json.clone(),
            br#"{"event_id":"e","node":"n1","ts_ms":1,"metrics":{"loss":-1}}"#.to_vec(),
            "metric loss is -1",
        ),
    ];
    for (n, (headers, body, _)) in (0i64..).zip(&bad) {
        raw(
            &js,
            "mapek.monitor.n1",
            HeaderMap::new(),
            encode(&good(n)).unwrap(),
        )
        .await;
        raw(&js, "mapek.monitor.n1", headers.clone(), body.clone()).await;
    }
    // Valid JSON telemetry is accepted beside Avro.
    let json_ok = serde_json::to_vec(&good(100)).unwrap();
    raw(&js, "mapek.monitor.n1", json.clone(), json_ok).await;

    // Read as an analyze worker does: n1's partition.
    let mut config = InboxConfig::new("analyze-test");
    let partition = mapek_bus::layout::partition_of_node(
        &NodeId::new("n1").unwrap(),
        mapek_bus::layout::DEFAULT_PARTITIONS,
    );
    config.filter = Some(format!("mapek.monitor.{partition}.>"));
    let mut inbox = Inbox::<Telemetry>::open(&js, config).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 8 {
        for delivery in inbox.next_batch(Duration::from_secs(2)).await.unwrap() {
            delivery.ack().await.unwrap();
            got.push(delivery.event);
        }
    }
    let expected: Vec<Telemetry> = (0..7).map(good).chain([good(100)]).collect();
    assert_eq!(got, expected, "every good message, in order");
    assert_eq!(inbox.rejected(), bad.len() as u64);

    // Nothing more comes: the bad ones were terminated, not left for redelivery.
    assert!(
        inbox
            .next_batch(Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(stream_len(&js, "MAPEK_DLQ").await, bad.len() as u64);
    let mut dead = Subscriber::<Rejected>::open(&js, SubscriberConfig::all())
        .await
        .unwrap();
    for (headers, body, reason) in &bad {
        let r = dead.next().await.unwrap().unwrap().event.unwrap();
        assert_eq!(r.phase, "monitor");
        assert!(r.subject.starts_with("mapek.monitor.") && r.subject.ends_with(".n1"));
        assert!(
            r.reason.contains(reason),
            "{} should contain {reason}",
            r.reason
        );
        assert_eq!(&r.original, body, "the original bytes are kept");
        assert!(r.stream_seq > 0);
        assert_eq!(r.node.as_str(), "n1");
        if headers.get("Content-Type").is_some() {
            assert_eq!(r.headers["Content-Type"], "application/json");
        }
    }
}

#[tokio::test]
async fn a_two_mebibyte_message_is_refused_by_the_stream_and_nothing_else_is_lost() {
    // The server allows big payloads, so the stream's own 1 MiB limit is what refuses it.
    let (_server, js) =
        mapek_testkit::with_streams(mapek_testkit::NatsServer::start_with("max_payload: 4MB"))
            .await;
    raw(
        &js,
        "mapek.monitor.n1",
        HeaderMap::new(),
        encode(&samples::telemetry("n1", 1, 1.0)).unwrap(),
    )
    .await;
    let err = js
        .publish("mapek.monitor.n1", Bytes::from(vec![0xC3; 2 * 1024 * 1024]))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("message size exceeds maximum"),
        "{err}"
    );
    raw(
        &js,
        "mapek.monitor.n1",
        HeaderMap::new(),
        encode(&samples::telemetry("n1", 2, 1.0)).unwrap(),
    )
    .await;
    assert_eq!(telemetry_len(&js).await, 2);
}

#[tokio::test]
async fn a_subscriber_shows_an_undecodable_message_and_goes_on() {
    let (_server, js) = server_with_streams().await;
    raw(&js, "mapek.monitor.n1", HeaderMap::new(), b"junk".to_vec()).await;
    raw(
        &js,
        "mapek.monitor.n1",
        HeaderMap::new(),
        encode(&samples::telemetry("n1", 5, 1.0)).unwrap(),
    )
    .await;
    let mut sub = Subscriber::<Telemetry>::open(&js, SubscriberConfig::all())
        .await
        .unwrap();
    let first = sub.next().await.unwrap().unwrap();
    assert!(
        first
            .event
            .unwrap_err()
            .to_string()
            .contains("not an Avro single-object")
    );
    let second = sub.next().await.unwrap().unwrap();
    assert_eq!(second.event.unwrap().ts_ms, 5);
    assert_eq!(
        stream_len(&js, "MAPEK_DLQ").await,
        0,
        "a viewer dead-letters nothing"
    );
}

#[tokio::test]
async fn json_is_refused_outside_the_monitor_subjects() {
    let (_server, js) = server_with_streams().await;
    let mut json = HeaderMap::new();
    json.insert("Content-Type", "application/json");
    let decision = samples::decision();
    raw(
        &js,
        "mapek.plan.n1",
        json,
        serde_json::to_vec(&decision).unwrap(),
    )
    .await;
    raw(
        &js,
        "mapek.plan.n1",
        HeaderMap::new(),
        encode(&decision).unwrap(),
    )
    .await;

    let mut inbox = Inbox::<mapek_domain::Decision>::open(&js, InboxConfig::new("execute-test"))
        .await
        .unwrap();
    let got = inbox.next_batch(Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event, decision);
    assert_eq!(inbox.rejected(), 1);
    let mut dead = Subscriber::<Rejected>::open(&js, SubscriberConfig::all())
        .await
        .unwrap();
    let r = dead.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(r.phase, "plan");
    assert!(
        r.reason
            .contains("JSON is accepted only on the monitor subjects"),
        "{}",
        r.reason
    );
}
