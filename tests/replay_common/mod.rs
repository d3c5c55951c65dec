//! What the replay tests share: a live log recorded by `mapek demo`, and `mapek replay`.

#![allow(dead_code)]

use std::process::Output;

use mapek_bus::{JetStream, layout};
use mapek_domain::Phase;
use mapek_testkit::NatsServer;

use crate::common::{mapek, run, stderr, stdout};

/// A fresh server holding the log of a whole `mapek demo` run on 32 nodes: telemetry,
/// symptoms, decisions, actions, outcomes, and the policy and analyze settings the workers
/// recorded at start. The server maps telemetry into partitions, as the configs mapek ships
/// do, so telemetry is split over `MAPEK_MONITOR_0` and `MAPEK_MONITOR_1`.
pub async fn recorded_demo() -> (NatsServer, JetStream) {
    recorded_demo_on(NatsServer::start()).await
}

/// [`recorded_demo`] on a server without the telemetry mapping: telemetry in one stream,
/// `MAPEK_MONITOR`.
pub async fn recorded_demo_in_one_telemetry_stream() -> (NatsServer, JetStream) {
    recorded_demo_on(NatsServer::start_without_mapping()).await
}

async fn recorded_demo_on(server: NatsServer) -> (NatsServer, JetStream) {
    // The demo keeps its embedded knowledge stores in ./mapek-data, which one process may
    // open at a time: each recording gets its own directory.
    let dir = tempfile::tempdir().unwrap();
    let mut demo = mapek(&server.url());
    demo.current_dir(dir.path())
        .args(["demo", "--nodes", "32", "--speed", "20"]);
    let out = run(demo);
    assert!(out.status.success(), "the demo failed: {}", stderr(&out));
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    (server, js)
}

/// Runs `mapek <args>` against `url`.
pub fn mapek_run(url: &str, args: &[&str]) -> Output {
    let mut cmd = mapek(url);
    cmd.args(args);
    run(cmd)
}

/// Runs `mapek <args> --json` and parses what it prints, whatever the exit code.
pub fn mapek_json(url: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = mapek_run(url, &all);
    let json = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
        panic!(
            "mapek {args:?} --json printed no JSON ({e}):\n{}\n{}",
            stdout(&out),
            stderr(&out)
        )
    });
    (out, json)
}

/// How many messages each phase's streams hold (telemetry's may be several), in phase order.
pub async fn stream_counts(js: &JetStream) -> Vec<(String, u64)> {
    let mut counts = Vec::new();
    for phase in Phase::ALL {
        let mut n = 0;
        for stored in layout::streams_of(js, phase).await.unwrap() {
            if let Ok(mut s) = js.get_stream(&stored.name).await {
                n += s.info().await.unwrap().state.messages;
            }
        }
        counts.push((phase.to_string(), n));
    }
    counts
}

/// The names of the streams that store telemetry on the server `js` is connected to.
pub async fn telemetry_streams(js: &JetStream) -> Vec<String> {
    layout::streams_of(js, Phase::Monitor)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect()
}

/// Every recorded decision, as `mapek subscribe decisions --json` prints them.
pub fn decisions(url: &str) -> Vec<serde_json::Value> {
    crate::common::subscribe_all(url, "decisions", &[])
        .into_iter()
        .map(|m| m["event"].clone())
        .collect()
}
