//! `mapek export` writes a slice of the log; `mapek replay verify --file` on another machine
//! (here: pointed at a fresh, empty server) gives the same verdict as on the live log, and an
//! edited slice is caught. The log is recorded on a server that splits telemetry over two
//! streams (ADR 0012): the slice keeps their names and their merged order, and replays on a
//! machine whose server does not split it (the slice is read as a file, never loaded into the
//! server).

mod common;
mod replay_common;

use common::{mapek, stderr};
use mapek_domain::Decision;
use mapek_replay::record::{base64_decode, base64_encode};
use mapek_replay::slice::Slice;
use mapek_testkit::NatsServer;
use replay_common::{mapek_json, recorded_demo, stream_counts};

fn export(url: &str, args: &[&str], path: &std::path::Path) {
    let mut cmd = mapek(url);
    cmd.arg("export").args(args);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, &out.stdout).unwrap();
}

#[tokio::test]
async fn a_slice_replays_elsewhere_to_the_same_verdict() {
    let (server, _js) = recorded_demo().await;
    let dir = tempfile::tempdir().unwrap();
    let slice = dir.path().join("all.slice");
    export(&server.url(), &[], &slice);
    let (out, live) = mapek_json(&server.url(), &["replay", "verify"]);
    assert!(out.status.success(), "live verify: {live}");

    // The telemetry lines name their real streams, merged by stored time.
    let text = std::fs::read_to_string(&slice).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let telemetry: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["stream"].as_str().unwrap().starts_with("MAPEK_MONITOR"))
        .collect();
    let mut streams: Vec<&str> = telemetry
        .iter()
        .map(|l| l["stream"].as_str().unwrap())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    assert_eq!(streams, ["MAPEK_MONITOR_0", "MAPEK_MONITOR_1"]);
    let stored: Vec<i64> = telemetry
        .iter()
        .map(|l| l["stored_ms"].as_i64().unwrap())
        .collect();
    assert!(stored.is_sorted(), "telemetry merged by stored time");

    let fresh = NatsServer::start_without_mapping();
    let file = slice.display().to_string();
    let (out, replayed) = mapek_json(&fresh.url(), &["replay", "verify", "--file", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    for key in ["telemetry", "symptoms", "decisions", "differences"] {
        assert_eq!(live[key], replayed[key], "{key}");
    }
    // Nothing was written to the server it ran beside.
    let js = mapek_bus::connect(&fresh.url()).await.unwrap();
    assert!(stream_counts(&js).await.iter().all(|(_, n)| *n == 0));
}

#[tokio::test]
async fn a_node_slice_up_to_a_time_holds_what_its_decisions_need() {
    let (server, _js) = recorded_demo().await;
    let decisions = replay_common::decisions(&server.url());
    let d = &decisions[0];
    let (node, ts) = (d["node"].as_str().unwrap(), d["ts_ms"].as_i64().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let slice = dir.path().join("node.slice");
    let to = (ts + 1000).to_string();
    export(&server.url(), &["--node", node, "--to", &to], &slice);
    let header = Slice::open(&slice).unwrap().header;
    let telemetry: Vec<&String> = header
        .counts
        .keys()
        .filter(|s| s.starts_with("MAPEK_MONITOR"))
        .collect();
    assert_eq!(
        telemetry.len(),
        1,
        "a node's partition is in one stream: {telemetry:?}"
    );
    let file = slice.display().to_string();
    let (out, report) = mapek_json(
        "nats://127.0.0.1:1",
        &["replay", "verify", "--file", &file, "--node", node],
    );
    assert!(out.status.success(), "{}\n{report}", stderr(&out));
    assert!(
        report["decisions"]["identical"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(
        report["range"]["to_ms"],
        ts + 1000,
        "the slice's range is the default"
    );
}

#[tokio::test]
async fn an_edited_slice_fails_the_verify() {
    let (server, _js) = recorded_demo().await;
    let dir = tempfile::tempdir().unwrap();
    let slice = dir.path().join("all.slice");
    export(&server.url(), &[], &slice);
    let text = std::fs::read_to_string(&slice).unwrap();
    let mut edited = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut line: serde_json::Value = serde_json::from_str(l).unwrap();
            if edited || line["stream"] != "MAPEK_PLAN" {
                return l.to_owned();
            }
            let body = base64_decode(line["body"].as_str().unwrap()).unwrap();
            let mut d: Decision = mapek_codec::decode(&body).unwrap();
            d.action.params.insert("note".into(), "edited".into());
            line["body"] = base64_encode(&mapek_codec::encode(&d).unwrap()).into();
            edited = true;
            line.to_string()
        })
        .collect();
    assert!(edited);
    std::fs::write(&slice, lines.join("\n")).unwrap();
    let file = slice.display().to_string();
    let (out, report) = mapek_json("nats://127.0.0.1:1", &["replay", "verify", "--file", &file]);
    assert!(!out.status.success(), "{report}");
    assert_eq!(report["decisions"]["different"], 1, "{report}");
    assert_eq!(
        report["differences"][0]["fields"][0]["field"],
        "action.params.note"
    );
}
