//! `mapek replay what-if` backtests a policy on the recorded symptoms: the policy in force
//! changes nothing; a rule's threshold raised out of reach turns exactly its decisions into
//! escalations; a backtest through the incident index consults no outcome from after the
//! symptom it decides on.

mod common;
mod replay_common;

use std::collections::BTreeMap;

use common::{stderr, stdout, subscribe_all};
use replay_common::{decisions, mapek_json, mapek_run, recorded_demo};

const DEFAULT: &str = include_str!("../policies/default.toml");

fn write_policy(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn what_if_with_the_policy_in_force_changes_nothing() {
    let (server, _js) = recorded_demo().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let same = write_policy(&dir, "same.toml", DEFAULT);
    let out = mapek_run(&url, &["replay", "what-if", "--policy", &same]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("verdict: no change"), "{text}");

    let (_, report) = mapek_json(&url, &["replay", "what-if", "--policy", &same]);
    let recorded = decisions(&url).len() as u64;
    assert_eq!(report["total"]["same"], recorded, "{report}");
    let listed = report["decisions"].as_array().unwrap();
    assert_eq!(
        listed.len() as u64,
        recorded,
        "every decision is listed: {report}"
    );
    assert!(
        listed.iter().all(|x| x["recorded"] == x["what_if"]),
        "{report}"
    );
    for change in ["changed", "added", "removed"] {
        assert_eq!(report["total"][change], 0, "{report}");
    }
}

#[tokio::test]
async fn what_if_with_a_raised_threshold_escalates_what_the_rule_decided() {
    let (server, _js) = recorded_demo().await;
    let url = server.url();
    let rule = "name = \"lossy-link\"\nsymptom = \"packet_loss\"\nhas_peer = true\n";
    assert!(
        DEFAULT.contains(rule),
        "the default policy has the lossy-link rule"
    );
    let raised = DEFAULT.replace(rule, &format!("{rule}min_severity = 100.0\n"));
    let dir = tempfile::tempdir().unwrap();
    let candidate = write_policy(&dir, "candidate.toml", &raised);

    let recorded = decisions(&url);
    let lossy = recorded
        .iter()
        .filter(|d| d["rule"] == "lossy-link")
        .count() as u64;
    assert!(lossy >= 1, "the degraded link was decided by lossy-link");

    let (out, report) = mapek_json(&url, &["replay", "what-if", "--policy", &candidate]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Every lossy-link decision is escalated instead. What follows on the same nodes may
    // change too: a loss the reroute would have cleared, or that its cooldown kept quiet, is
    // decided by another rule now. How much follows depends on how the recorded run unfolded,
    // but it is only loss: nothing else the loop decided moves.
    assert!(
        report["total"]["changed"].as_u64().unwrap() >= lossy,
        "{report}"
    );
    for (kind, counts) in report["per_kind"].as_object().unwrap() {
        if kind != "packet_loss" {
            for change in ["changed", "added", "removed"] {
                assert_eq!(counts[change], 0, "{kind}: {report}");
            }
        }
    }
    let reroutes = report["per_action"]["reroute"].as_array().unwrap();
    assert_eq!(
        reroutes[0].as_u64().unwrap() - reroutes[1].as_u64().unwrap(),
        lossy,
        "{report}"
    );
    // Every decision is in the report, the same ones too; the text lists every change.
    let all = report["decisions"].as_array().unwrap();
    let count = |change: &str| all.iter().filter(|x| x["change"] == change).count() as u64;
    for change in ["same", "changed", "added", "removed"] {
        assert_eq!(
            count(change),
            report["total"][change].as_u64().unwrap(),
            "{change}"
        );
    }
    let mut escalated = 0;
    for x in all.iter().filter(|x| x["change"] != "same") {
        assert_eq!(x["kind"], "packet_loss", "{x}");
        if x["recorded"]["rule"] == "lossy-link" {
            assert_eq!(x["change"], "changed");
            let action = x["what_if"]["action"].as_str().unwrap();
            assert!(action.starts_with("escalate"), "{x}");
            escalated += 1;
        }
    }
    assert_eq!(
        escalated, lossy,
        "every lossy-link decision is listed: {report}"
    );
    let text = stdout(&mapek_run(
        &url,
        &["replay", "what-if", "--policy", &candidate],
    ));
    let listed = text
        .lines()
        .filter(|l| {
            ["Changed: ", "Added: ", "Removed: "]
                .iter()
                .any(|c| l.starts_with(c))
        })
        .count() as u64;
    assert_eq!(
        listed,
        count("changed") + count("added") + count("removed"),
        "{text}"
    );
    assert!(text.contains("decisions would change"), "{text}");
}

#[tokio::test]
async fn a_backtest_through_the_incident_index_consults_no_outcome_from_after_the_symptom() {
    let (server, _js) = recorded_demo().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let rebuilt = mapek_run(&url, &["knowledge", "rebuild", "--data-dir", data]);
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    let policy = write_policy(&dir, "default.toml", DEFAULT);
    let args = ["replay", "what-if", "--policy", &policy, "--consult-index"];
    let (out, report) = mapek_json(&url, &[&args[..], &["--data-dir", data]].concat());
    assert!(out.status.success(), "{}", stderr(&out));

    // When each incident's outcome was first known, from the log.
    let mut judged: BTreeMap<String, i64> = BTreeMap::new();
    for o in subscribe_all(&url, "outcomes", &[]) {
        let (id, ts) = (&o["event"]["incident_id"], &o["event"]["ts_ms"]);
        let ts = ts.as_i64().unwrap();
        let first = judged.entry(id.as_str().unwrap().to_owned()).or_insert(ts);
        *first = (*first).min(ts);
    }
    let mut consulted = 0;
    let mut earliest = i64::MAX;
    for x in report["decisions"].as_array().unwrap() {
        let decided_at = x["ts_ms"].as_i64().unwrap();
        for id in x["what_if"]["knowledge"].as_array().into_iter().flatten() {
            let id = id.as_str().unwrap();
            assert!(
                judged[id] < decided_at,
                "{} at {decided_at} consulted {id}, judged at {}",
                x["symptom_id"],
                judged[id]
            );
            consulted += 1;
            earliest = earliest.min(decided_at);
        }
    }
    assert!(consulted > 0, "the backtest consulted the index: {report}");
    assert!(
        judged.values().any(|&t| t > earliest),
        "the index held outcomes from after the symptoms that consulted it"
    );
    // Asked without an index, it says where to get one.
    let none = mapek_run(&url, &[&args[..], &["--data-dir", "/nonexistent"]].concat());
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("mapek knowledge rebuild"),
        "{}",
        stderr(&none)
    );
}

#[tokio::test]
async fn what_if_with_other_analyze_settings_finds_the_symptoms_again_and_compares() {
    let (server, _js) = recorded_demo().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(&dir, "default.toml", DEFAULT);
    let what_if = |analyze: &str| {
        let file = write_policy(&dir, "analyze.toml", analyze);
        let args = ["replay", "what-if", "--policy", &policy, "--analyze", &file];
        mapek_json(&url, &args)
    };

    // The settings the demo ran with (silence after 10 s of its simulated time) find every
    // symptom again, and the same decisions.
    const DEMO: &str = "[analyze]\nsilent_after_ms = 10000\n";
    let (out, report) = what_if(DEMO);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(report["reanalyzed"], true);
    assert_eq!(
        report["total"]["same"],
        decisions(&url).len() as u64,
        "{report}"
    );
    for change in ["changed", "added", "removed"] {
        assert_eq!(report["total"][change], 0, "{report}");
    }

    // A CPU threshold above the hog's 96 % finds no CPU saturation: its decisions go.
    let recorded_cpu = decisions(&url)
        .iter()
        .filter(|d| d["rule"] == "cpu-saturated")
        .count() as u64;
    assert!(recorded_cpu >= 1, "the demo's CPU hog was decided on");
    let (out, report) = what_if("silent_after_ms = 10000\ncpu_threshold = 0.99\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let cpu = &report["per_kind"]["cpu_saturation"];
    assert_eq!(cpu["removed"].as_u64().unwrap(), recorded_cpu, "{report}");
    assert_eq!(
        (&cpu["same"], &cpu["added"]),
        (&0.into(), &0.into()),
        "{report}"
    );

    // The defaults judge silence after 30 s: the crashed node's silence is not found, and its
    // recorded decision is removed.
    let (_, report) = what_if("[analyze]\n");
    let silent = &report["per_kind"]["node_silent"];
    assert!(silent["removed"].as_u64().unwrap() >= 1, "{report}");
    // Settings that break a rule are refused, naming the file.
    let bad = write_policy(&dir, "bad.toml", "cpu_threshold = 7.0\n");
    let out = mapek_run(
        &url,
        &["replay", "what-if", "--policy", &policy, "--analyze", &bad],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.toml"), "{}", stderr(&out));
}
