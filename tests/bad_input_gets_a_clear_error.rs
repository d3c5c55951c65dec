//! Each kind of bad input is refused with its line number and reason; the good lines around
//! it are published; each refused line is kept as a dead letter.

mod common;

use common::{mapek, run, run_with_input, stderr, stdout, subscribe_all};
use mapek_bus::{BusError, Publisher};
use mapek_testkit::samples;
use mapek_testkit::server_with_streams;

#[tokio::test]
async fn bad_lines_are_named_and_the_good_ones_still_published() {
    let (server, _js) = server_with_streams().await;
    let huge = format!(
        r#"{{"node":"n9","ts_ms":1,"metrics":{{}},"event_id":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let input = [
        r#"{"node":"ok1","ts_ms":1795867200000,"metrics":{"latency_ms":1}}"#,
        r#"{"node":"bad node!","ts_ms":1,"metrics":{}}"#,
        r#"{"node":"n2","ts_ms":1,"metrics":{"latency_ms":"fast"}}"#,
        r#"{"ts_ms":1,"metrics":{"latency_ms":1}}"#,
        r#"{"node":"n3","ts_ms":1,"metrics":{"latency_ms":1e999}}"#,
        r#"{"node":"n4","ts_ms":1,"metrics":{"loss":2.5}}"#,
        huge.as_str(),
        r#"{"node":"n5","ts_ms":1,"metrics":{"latency_ms":1}"#,
        "not json at all",
        r#"{"node":"ok2","ts_ms":1795867200001,"metrics":{"latency_ms":2}}"#,
    ]
    .join("\n");
    let mut publish = mapek(&server.url());
    publish.arg("publish");
    let out = run_with_input(publish, input.as_bytes());
    assert_eq!(out.status.code(), Some(2), "bad lines make exit status 2");
    let err = stderr(&out);
    let expected = [
        "line 2: invalid node id \"bad node!\": may contain only letters, digits, '_' and '-'",
        "line 3: invalid type: string \"fast\", expected f64 (at column",
        "line 4: missing field `node`",
        "line 5: number out of range",
        "line 6: metric loss is 2.5, but must be between 0 and 1",
        "line 7: line is 2097",
        "line 8: EOF while parsing an object",
        "line 9: expected ident",
    ];
    for want in expected {
        assert!(
            err.contains(want),
            "stderr lacks {want:?}:\n{}",
            &err[..err.len().min(3000)]
        );
    }
    assert!(!err.contains("panicked"));
    assert!(
        stdout(&out).contains("published 2 events: 2 stored") && stdout(&out).contains("8 refused"),
        "{}",
        stdout(&out)
    );

    let stored = subscribe_all(&server.url(), "telemetry", &[]);
    let nodes: Vec<&str> = stored
        .iter()
        .map(|e| e["event"]["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["ok1", "ok2"]);

    let dead = subscribe_all(&server.url(), "rejected", &[]);
    assert_eq!(dead.len(), 8);
    assert!(
        dead[0]["event"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("line 2: invalid node id")
    );
    assert_eq!(
        dead[5]["event"]["original_len"].as_i64().unwrap(),
        huge.len() as i64
    );
    assert_eq!(
        dead[5]["event"]["original"].as_array().unwrap().len(),
        64 * 1024,
        "a huge line is kept cut to 64 KiB"
    );
}

#[tokio::test]
async fn bad_flags_name_the_flag() {
    let (server, _js) = server_with_streams().await;
    let cases: [(&[&str], &str); 4] = [
        (
            &["--node", "n.1", "--metric", "cpu=0.5"],
            "invalid node id \"n.1\"",
        ),
        (
            &["--node", "n1", "--metric", "latency_ms=NaN"],
            "metric latency_ms is NaN",
        ),
        (
            &["--node", "n1", "--metric", "cpu"],
            "--metric \"cpu\": expected NAME=VALUE",
        ),
        (
            &["--node", "n1", "--metric", "cpu=lots"],
            "\"lots\" is not a number",
        ),
    ];
    for (args, want) in cases {
        let mut publish = mapek(&server.url());
        publish.arg("publish").args(args);
        let out = run(publish);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    assert!(subscribe_all(&server.url(), "telemetry", &[]).is_empty());
}

#[tokio::test]
async fn the_library_refuses_an_invalid_event_and_sends_nothing() {
    let (_server, js) = server_with_streams().await;
    let mut publisher = Publisher::new(js.clone());
    let mut nan = samples::telemetry("n1", samples::TS_MS, 1.0);
    nan.metrics.insert("jitter".into(), f64::INFINITY);
    let mut huge = samples::telemetry("n1", samples::TS_MS, 1.0);
    huge.event_id = "x".repeat(2 * 1024 * 1024);
    for (event, want) in [(nan, "metric jitter is inf"), (huge, "event is 2097")] {
        let err = publisher.publish(&event).await.unwrap_err();
        assert!(matches!(err, BusError::Codec(_)), "{err}");
        assert!(err.to_string().contains(want), "{err}");
    }
    publisher
        .publish(&samples::telemetry("n1", samples::TS_MS, 1.0))
        .await
        .unwrap();
    let report = publisher.finish().await;
    assert_eq!((report.sent, report.acked), (1, 1));
}
