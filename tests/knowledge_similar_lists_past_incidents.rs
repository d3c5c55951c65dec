//! `mapek knowledge similar <incident>`: a user asks which past incidents were like one, and
//! sees each with its action, its outcome and its score, as a table or as JSON; `--at-open`
//! keeps to what was known when the incident opened; an unknown incident or a missing index
//! is a sentence saying what to do.

mod common;

use mapek_domain::ActionKind;
use mapek_testkit::samples;
use mapek_vectors::{EdgeIndex, Incident, IncidentIndex, Offsets};

const T0: i64 = 1_795_867_200_000;

/// A CPU incident on `node` opened at `opened_ms`; `outcome` = (action, resolved), judged 30 s
/// later, or no decision at all.
fn cpu(
    id: &str,
    node: &str,
    opened_ms: i64,
    cpu: f64,
    outcome: Option<(ActionKind, bool)>,
) -> Incident {
    let s = samples::cpu_symptom(id, node, opened_ms, cpu);
    match outcome {
        Some((action, resolved)) => {
            let (d, o) = samples::closing(&s, action, opened_ms + 30_000, resolved);
            Incident::folded(&s, Some(&d), Some(&o))
        }
        None => Incident::folded(&s, None, None),
    }
}

fn similar(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = common::mapek("nats://127.0.0.1:1");
    cmd.env("MAPEK_DATA_DIR", data_dir)
        .args(["knowledge", "similar"])
        .args(args);
    common::run(cmd)
}

#[tokio::test]
async fn similar_lists_the_nearest_past_incidents_with_actions_outcomes_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = EdgeIndex::open(&EdgeIndex::default_dir(dir.path())).unwrap();
        let incidents = vec![
            cpu(
                "escalated",
                "n3",
                T0,
                0.97,
                Some((ActionKind::Escalate, false)),
            ),
            cpu(
                "restarted",
                "n9",
                T0 + 100_000,
                0.96,
                Some((ActionKind::RestartService, true)),
            ),
            cpu(
                "milder",
                "n4",
                T0 + 200_000,
                0.91,
                Some((ActionKind::RateLimit, true)),
            ),
            cpu("now", "n15", T0 + 300_000, 0.97, None),
            cpu(
                "after",
                "n2",
                T0 + 400_000,
                0.97,
                Some((ActionKind::RestartService, true)),
            ),
        ];
        index.write(incidents, Offsets::default()).await.unwrap();
    }

    let out = similar(dir.path(), &["now", "-k", "3"]);
    let text = common::stdout(&out);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("incident now on n15: cpu_saturation"),
        "{text}"
    );
    assert!(
        lines[1].contains("score") && lines[1].contains("outcome"),
        "{text}"
    );
    assert_eq!(
        lines.len(),
        5,
        "a header, the column names and k = 3 rows: {text}"
    );
    // Equally close (0.97): `after` and `escalated` come first, by id; `restarted` next.
    assert!(
        lines[2].contains("after") && lines[2].contains("restart_service"),
        "{text}"
    );
    assert!(
        lines[3].contains("escalated") && lines[3].contains("not resolved"),
        "{text}"
    );
    assert!(
        lines[4].contains("restarted") && lines[4].contains(" resolved"),
        "{text}"
    );

    // As known when `now` opened: `after` was not judged yet.
    let out = similar(dir.path(), &["now", "--at-open", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["incident"]["incident_id"], "now");
    let found: Vec<(&str, &str, bool)> = v["similar"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["incident"]["incident_id"].as_str().unwrap(),
                s["incident"]["action"].as_str().unwrap(),
                s["incident"]["resolved"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("escalated", "escalate", false),
            ("restarted", "restart_service", true),
            ("milder", "rate_limit", true)
        ]
    );
    let scores: Vec<f64> = v["similar"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    let out = similar(dir.path(), &["nope"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("incident nope is not in the incident index at"),
        "{err}"
    );
}

#[test]
fn similar_without_an_index_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = similar(dir.path(), &["any"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(err.contains("no incident index at"), "{err}");
    assert!(err.contains("mapek knowledge rebuild"), "{err}");
    assert!(
        !dir.path().join("incidents").exists(),
        "asking must not create an index"
    );
}
