//! `mapek replay verify` on a log recorded live (the demo's loop against a real nats-server)
//! reproduces every symptom and decision byte for byte, and leaves no trace on the server.

mod common;
mod replay_common;

use common::{stderr, stdout};
use replay_common::{decisions, mapek_json, mapek_run, recorded_demo, stream_counts};

#[tokio::test]
async fn verify_reproduces_every_symptom_and_decision_of_a_live_run() {
    let (server, js) = recorded_demo().await;
    let url = server.url();
    let before = stream_counts(&js).await;

    let out = mapek_run(&url, &["replay", "verify"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("verdict: identical"), "{text}");

    let (_, report) = mapek_json(&url, &["replay", "verify"]);
    let recorded = decisions(&url).len() as u64;
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
        "every telemetry event is read"
    );

    // Replay publishes nothing: every stream holds what it held before.
    assert_eq!(stream_counts(&js).await, before);
}

#[tokio::test]
async fn verify_compares_only_the_node_and_range_asked_for() {
    let (server, _js) = recorded_demo().await;
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
}
