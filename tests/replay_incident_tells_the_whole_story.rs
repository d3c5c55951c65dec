//! `mapek replay incident <id>` tells an incident's story from the log: the telemetry that
//! tipped the detector, each symptom, the decision with its rule and reason, the action (or
//! the interlock that refused it) and the outcome.

mod common;
mod replay_common;

use common::{stderr, stdout, subscribe_all};
use replay_common::{mapek_json, mapek_run, recorded_demo};

fn stages(story: &serde_json::Value) -> Vec<String> {
    story["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stage"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_story_of_an_acted_incident_has_every_stage() {
    let (server, _js) = recorded_demo().await;
    let url = server.url();
    let outcomes = subscribe_all(&url, "outcomes", &[]);
    let incident = outcomes[0]["event"]["incident_id"].as_str().unwrap();

    let (out, story) = mapek_json(&url, &["replay", "incident", incident]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stages = stages(&story);
    for stage in ["telemetry", "symptom", "decision", "action", "outcome"] {
        assert!(stages.iter().any(|s| s == stage), "{stage} in {stages:?}");
    }
    let first = |stage: &str| stages.iter().position(|s| s == stage).unwrap();
    assert!(first("telemetry") <= first("symptom"));
    assert!(first("symptom") < first("decision"));
    assert!(first("decision") < first("action"));
    assert!(first("action") < first("outcome"));

    let out = mapek_run(&url, &["replay", "incident", incident]);
    let text = stdout(&out);
    assert!(text.contains(&format!("incident {incident}")), "{text}");
    assert!(
        text.contains("reason: rule `"),
        "the decision's reason:\n{text}"
    );
    assert!(text.contains("candidates"), "the rule behind it:\n{text}");
    assert!(
        text.contains("neighbours:"),
        "the knowledge consulted:\n{text}"
    );
    assert!(
        text.contains("evidence:"),
        "the symptom's evidence:\n{text}"
    );
}

#[tokio::test]
async fn a_refused_action_shows_the_interlock_its_reason_and_whom_it_was_escalated_to() {
    let (server, _js) = recorded_demo().await;
    let url = server.url();
    let actions = subscribe_all(&url, "actions", &[]);
    let refused = actions
        .iter()
        .map(|a| &a["event"])
        .find(|a| a["status"] == "refused")
        .expect("the demo's interlocks refuse some actions");
    let incident = refused["incident_id"].as_str().unwrap();
    let (_, story) = mapek_json(&url, &["replay", "incident", incident]);
    let entry = story["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stage"] == "interlock")
        .unwrap_or_else(|| panic!("an interlock entry in {story}"));
    let reason = refused["reason"].as_str().unwrap();
    let title = entry["title"].as_str().unwrap();
    assert!(title.contains(reason), "{entry}");
    // The refusal was handed to a human, and the story says to whom.
    assert!(
        refused["escalation"]["team"].is_string(),
        "the refused result's escalation: {refused}"
    );
    assert!(title.contains("; escalated to a human (team="), "{entry}");
}

#[tokio::test]
async fn an_unknown_incident_is_a_clear_error() {
    let (server, _js) = recorded_demo().await;
    let out = mapek_run(&server.url(), &["replay", "incident", "no-such-incident"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no incident no-such-incident"),
        "{}",
        stderr(&out)
    );
}
