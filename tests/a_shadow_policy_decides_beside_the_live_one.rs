//! As an operator tries a candidate policy: `mapek run --shadow-policy policies/restart-first.toml`
//! on a 32-node simulated mesh where five nodes saturate their CPU at once. The live (default)
//! policy limits their rate, and the executor applies three and refuses two (10 % of the
//! mesh). The candidate decides every symptom too, on its own subjects: it would restart the
//! daemons, and with 5 % of the mesh at most the executor would have refused four of its five.
//! Nothing it decides is executed or enters the decision log; `mapek shadow diff` shows all
//! of it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{interrupt, mapek, repo, run, spawn, stdout, stream_len};
use mapek_testkit::server_with_streams;
use serde_json::Value;

const HOGGED: [&str; 5] = ["n3", "n7", "n12", "n18", "n25"];

/// Five CPU hogs from the fifth second, for good.
fn faults() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for node in HOGGED {
        writeln!(
            file,
            "[[fault]]\nkind = \"cpu_hog\"\nstart_s = 5.0\nnode = \"{node}\"\n"
        )
        .unwrap();
    }
    file
}

/// Waits until `stream` holds `n` messages.
async fn until_stored(js: &mapek_bus::JetStream, stream: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while stream_len(js, stream).await < n {
        assert!(
            Instant::now() < deadline,
            "{stream} never held {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn diff_json(url: &str) -> Value {
    let mut diff = mapek(url);
    diff.args(["shadow", "diff", "--since", "1h", "--json"]);
    let out = run(diff);
    assert!(out.status.success(), "{}", common::stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("JSON")
}

#[tokio::test]
async fn a_shadow_policy_decides_every_symptom_and_diff_shows_where_it_differs() {
    let (server, js) = server_with_streams().await;
    let url = server.url();
    let data = tempfile::tempdir().unwrap();
    let candidate = repo().join("policies/restart-first.toml");
    let mut run_loop = mapek(&url);
    run_loop
        .args([
            "run",
            "--worker",
            "w",
            "--metrics-addr",
            "off",
            "--shadow-policy",
        ])
        .arg(&candidate)
        .env("MAPEK_DATA_DIR", data.path());
    let the_loop = spawn(run_loop);
    let faults = faults();
    let mut sim = mapek(&url);
    sim.args(["sim", "--nodes", "32", "--faults"])
        .arg(faults.path())
        .args(["--duration", "120s"]);
    let mut sim = spawn(sim);

    until_stored(&js, "MAPEK_EXECUTE", 5).await;
    until_stored(&js, "MAPEK_SHADOW", 5).await;
    let _ = sim.kill();
    let _ = sim.wait();

    let reports = diff_json(&url);
    let [report] = reports.as_array().unwrap().as_slice() else {
        panic!("one candidate: {reports:#}");
    };
    assert_eq!(report["policy"], "restart-first", "{report:#}");
    let total = &report["total"];
    assert_eq!(
        (total["same"].as_u64(), total["changed"].as_u64()),
        (Some(0), Some(5)),
        "{report:#}"
    );
    assert_eq!(report["live_refused"], 2, "10 % of 32 nodes: {report:#}");
    assert_eq!(report["would_be_refused"], 4, "5 % of 32 nodes: {report:#}");
    let decisions = report["decisions"].as_array().unwrap();
    let mut nodes: Vec<&str> = decisions
        .iter()
        .map(|d| d["node"].as_str().unwrap())
        .collect();
    nodes.sort_unstable();
    let mut hogged = HOGGED.to_vec();
    hogged.sort_unstable();
    assert_eq!(nodes, hogged);
    for d in decisions {
        assert_eq!(d["live"]["action"], "rate_limit", "{d:#}");
        assert_eq!(d["shadow"]["action"], "restart_service meshd", "{d:#}");
        if let Some(why) = d["would_be_refused"].as_str() {
            assert!(
                why.starts_with("blast radius: acting would put 2 of 32 known nodes under action")
                    && why.ends_with("escalated to a human (team=netops, urgency=high)"),
                "{why}"
            );
        }
    }

    // Nothing the candidate decided reached the decisions, the executor or a node.
    assert_eq!(stream_len(&js, "MAPEK_PLAN").await, 5);
    let shadow = common::subscribe_all(&url, "shadow", &[]);
    assert_eq!(shadow.len(), 5);
    let actions = common::subscribe_all(&url, "actions", &[]);
    for s in &shadow {
        assert_eq!(s["event"]["policy_name"], "restart-first");
        assert_eq!(s["event"]["signature"], Value::Array(vec![]), "unsigned");
        let id = &s["event"]["decision_id"];
        assert!(actions.iter().all(|a| &a["event"]["decision_id"] != id));
    }

    // As people read it.
    let mut diff = mapek(&url);
    diff.args(["shadow", "diff", "--policy", "restart-first"]);
    let text = stdout(&run(diff));
    assert!(
        text.contains("0 same, 5 changed, 0 shadow only, 0 live only; 4 would have been refused"),
        "{text}"
    );
    assert!(
        text.contains("would have been refused: blast radius"),
        "{text}"
    );

    let err = interrupt(the_loop);
    assert!(err.contains("shadow policy restart-first"), "{err}");
    assert!(err.contains("shadow-restart-first: "), "{err}");
}

#[tokio::test]
async fn a_shadow_policy_named_as_the_live_one_is_refused_with_the_reason() {
    let (server, _js) = server_with_streams().await;
    let mut run_loop = mapek(&server.url());
    run_loop
        .args([
            "run",
            "--metrics-addr",
            "off",
            "--duration",
            "1s",
            "--shadow-policy",
        ])
        .arg(repo().join("policies/default.toml"));
    let out = run(run_loop);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("default.toml") && err.contains("is the live policy's or another candidate's"),
        "{err}"
    );
}
