//! `mapek replay verify` on a log recorded live (the demo's loop against a real nats-server)
//! reproduces every symptom and decision byte for byte, and leaves no trace on the server:
//! with telemetry split over two streams by the server's mapping (ADR 0012), and in the one
//! stream of a server without it.

mod common;
mod replay_common;

use common::{stderr, stdout};
use mapek_bus::{JetStream, headers};
use mapek_domain::Telemetry;
use replay_common::{
    decisions, mapek_json, mapek_run, recorded_demo, recorded_demo_in_one_telemetry_stream,
    stream_counts, telemetry_streams,
};

/// Verifies the whole log of the demo recorded on `url` and checks the report.
async fn verify_reproduces_the_whole_log(url: &str, js: &JetStream) {
    let before = stream_counts(js).await;

    let out = mapek_run(url, &["replay", "verify"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("verdict: identical"), "{text}");

    let (_, report) = mapek_json(url, &["replay", "verify"]);
    let recorded = decisions(url).len() as u64;
    assert!(recorded >= 4, "the demo decided on its faults: {recorded}");
    assert_eq!(report["decisions"]["recorded"], recorded, "{report}");
    assert_eq!(report["decisions"]["identical"], recorded, "{report}");
    assert!(report["symptoms"]["identical"].as_u64().unwrap() >= recorded);
    assert_eq!(
        report["symptoms"]["recorded"],
        report["symptoms"]["identical"]
    );
    assert_eq!(
        report["telemetry"], before[0].1,
        "every telemetry event is read, from every telemetry stream"
    );

    // Replay publishes nothing: every stream holds what it held before.
    assert_eq!(stream_counts(js).await, before);
}

/// The event time of the telemetry at `seq` of `stream`.
async fn telemetry_time(js: &JetStream, stream: &str, seq: u64) -> i64 {
    let stream = js.get_stream(stream).await.unwrap();
    let m = stream.get_raw_message(seq).await.unwrap();
    let t: Telemetry = headers::decode_body(Some(&m.headers), &m.payload).unwrap();
    t.ts_ms
}

#[tokio::test]
async fn verify_reproduces_every_symptom_and_decision_of_a_live_run() {
    let (server, js) = recorded_demo().await;
    assert_eq!(
        telemetry_streams(&js).await,
        ["MAPEK_MONITOR_0", "MAPEK_MONITOR_1"],
        "the server maps telemetry into partitions"
    );
    verify_reproduces_the_whole_log(&server.url(), &js).await;
}

#[tokio::test]
async fn verify_reproduces_a_live_run_stored_in_one_telemetry_stream() {
    let (server, js) = recorded_demo_in_one_telemetry_stream().await;
    assert_eq!(telemetry_streams(&js).await, ["MAPEK_MONITOR"]);
    verify_reproduces_the_whole_log(&server.url(), &js).await;

    // There, a bare sequence is one of MAPEK_MONITOR.
    let (out, report) = mapek_json(&server.url(), &["replay", "verify", "--from", "seq:2"]);
    assert!(out.status.success(), "{}\n{report}", stderr(&out));
    assert_eq!(
        report["range"]["from_ms"],
        telemetry_time(&js, "MAPEK_MONITOR", 2).await
    );
}

#[tokio::test]
async fn verify_compares_only_the_node_and_range_asked_for() {
    let (server, js) = recorded_demo().await;
    let url = server.url();
    let all = decisions(&url);
    let first = &all[0];
    let node = first["node"].as_str().unwrap();
    let ts = first["ts_ms"].as_i64().unwrap().to_string();
    let on_node = all.iter().filter(|d| d["node"] == node).count() as u64;

    let (out, report) = mapek_json(&url, &["replay", "verify", "--node", node]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(report["decisions"]["recorded"], on_node, "{report}");

    let (out, report) = mapek_json(&url, &["replay", "verify", "--from", &ts, "--to", &ts]);
    assert!(out.status.success(), "{}", stderr(&out));
    let at_ts = all.iter().filter(|d| d["ts_ms"] == first["ts_ms"]).count() as u64;
    assert_eq!(report["decisions"]["recorded"], at_ts, "{report}");
    assert!(at_ts < all.len() as u64, "the range leaves decisions out");

    // Telemetry split over two streams has two sequences 2: a bare one is refused, saying
    // what to give instead; one with its stream names a time.
    let out = mapek_run(&url, &["replay", "verify", "--from", "2"]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("ambiguous") && said.contains("MAPEK_MONITOR_0:2"),
        "{said}"
    );
    let (out, report) = mapek_json(&url, &["replay", "verify", "--from", "MAPEK_MONITOR_1:2"]);
    assert!(out.status.success(), "{}\n{report}", stderr(&out));
    assert_eq!(
        report["range"]["from_ms"],
        telemetry_time(&js, "MAPEK_MONITOR_1", 2).await
    );
}
