//! `mapek demo`, the README's first command, runs the whole loop on a simulated mesh and ends
//! with a summary.

use std::collections::BTreeMap;

mod common;

use common::{mapek, run, stderr, stdout};
use mapek_testkit::NatsServer;

fn summary_number(summary: &str, after: &str) -> u64 {
    let start = summary
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} in {summary}"));
    summary[..start]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number before {after:?} in {summary}"))
}

#[test]
fn the_demo_finds_the_scripted_faults_and_decides_on_them() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut demo = mapek(&server.url());
    demo.current_dir(dir.path())
        .args(["demo", "--nodes", "32", "--speed", "20"]);
    let out = run(demo);
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{}", text, stderr(&out));
    for fault in ["degrades", "hung service", "flaps", "crashes", "cut off"] {
        assert!(
            text.contains(fault),
            "the script announces {fault:?}:\n{text}"
        );
    }
    let summary = text
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary");
    assert!(
        summary_number(summary, "incidents opened") >= 4,
        "{summary}"
    );
    assert!(summary_number(summary, "decisions") >= 4, "{summary}");
    for kind in ["packet_loss", "cpu_saturation", "node_silent"] {
        assert!(text.contains(kind), "{kind} is found:\n{text}");
    }
    assert!(
        text.contains("DECIDE    reroute n1"),
        "the degraded link is rerouted:\n{text}"
    );
    // Each action's result is shown after its decision, though the two come from two streams.
    let mut decided: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .iter()
            .position(|w| ["DECIDE", "APPLIED", "REFUSED", "FAILED"].contains(w))
        else {
            continue;
        };
        let node = words[at - 1];
        if words[at] == "DECIDE" {
            *decided.entry(node).or_default() += 1;
        } else {
            let left = decided.get_mut(node);
            assert!(
                left.as_ref().is_some_and(|n| **n > 0),
                "a result before its decision: {line}\n{text}"
            );
            *left.unwrap() -= 1;
        }
    }
    let audit = text
        .lines()
        .find(|l| l.trim_start().starts_with("audit:"))
        .unwrap_or_else(|| panic!("an audit line:\n{text}"));
    assert!(
        audit.contains("are signed (ML-DSA-65) and linked"),
        "every decision is signed and linked: {audit}"
    );
    let results = summary_number(audit, "results answer them");
    assert!(
        results > 0 && audit.ends_with(&format!("{results} signed by the executor")),
        "every result answers its decision and is signed: {audit}"
    );
    // The candidate policy in the shadow restarts the hung service where the live one limits
    // its rate: at least that decision differs.
    let shadow = text
        .lines()
        .find(|l| l.trim_start().starts_with("shadow policy restart-first"))
        .unwrap_or_else(|| panic!("a shadow policy line:\n{text}"));
    assert!(summary_number(shadow, "changed") >= 1, "{shadow}");

    // The knowledge outlives the demo: `mapek status` reads the embedded read model.
    let mut status = mapek("unused");
    status.current_dir(dir.path()).args(["status", "--json"]);
    let out = run(status);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(32),
        "every simulated node is in the read model: {status}"
    );
}

#[test]
fn the_demo_starts_its_own_nats_server_when_none_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = mapek("unused");
    demo.env_remove("MAPEK_NATS_URL")
        .current_dir(dir.path())
        .args(["demo", "--nodes", "16", "--speed", "40"]);
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        demo.env("NATS_SERVER_BIN", bin);
    }
    let out = run(demo);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("summary:"));
    for (path, what) in [
        ("mapek-data/nats/jetstream", "the NATS store"),
        ("mapek-data/knowledge.sqlite", "the SQL read model"),
        ("mapek-data/incidents", "the incident index"),
        ("mapek-data/keys/decision.pub", "the decision key"),
        ("mapek-data/keys/result.pub", "the executor's result key"),
    ] {
        assert!(
            dir.path().join(path).exists(),
            "{what} is under ./mapek-data"
        );
    }
}
