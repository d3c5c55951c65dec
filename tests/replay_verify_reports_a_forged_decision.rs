//! A recorded decision altered on purpose (a forged copy with another reason published for
//! the same symptom) is reported field by field, and `mapek replay verify` exits non-zero.

mod common;
mod replay_common;

use bytes::Bytes;
use common::{stderr, stdout};
use mapek_bus::{Subscriber, SubscriberConfig, headers};
use mapek_domain::{Decision, Event, Phase};
use replay_common::{mapek_json, mapek_run, recorded_demo};

#[tokio::test]
async fn a_forged_decision_is_reported_and_fails_the_verify() {
    let (server, js) = recorded_demo().await;
    let url = server.url();
    let mut sub = Subscriber::<Decision>::open(&js, SubscriberConfig::all())
        .await
        .unwrap();
    let original = sub.next().await.unwrap().unwrap().event.unwrap();

    let mut forged = original.clone();
    forged.reason = "an operator said so".into();
    let body = mapek_codec::encode(&forged).unwrap();
    let mut h = headers::for_event(&forged, "Decision/1");
    // Another message id, or JetStream would drop the forgery as a duplicate.
    h.insert(headers::MSG_ID, "forged-decision");
    let mut publisher = mapek_bus::Publisher::new(js.clone());
    publisher
        .publish_raw(
            Phase::Plan.subject(forged.node()),
            h,
            Bytes::from(body),
            "forged-decision",
        )
        .await
        .unwrap();
    assert_eq!(publisher.finish().await.acked, 1);

    let out = mapek_run(&url, &["replay", "verify"]);
    let text = stdout(&out);
    assert!(!out.status.success(), "verify must fail:\n{text}");
    assert!(
        text.contains(&format!("decision on symptom {}", original.symptom_id)),
        "{text}"
    );
    assert!(text.contains("    reason:"), "the field is named:\n{text}");
    assert!(
        text.contains("an operator said so"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("1 different"), "{text}");

    let (_, report) = mapek_json(&url, &["replay", "verify"]);
    let diffs = report["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{report}");
    assert_eq!(diffs[0]["kind"], "changed");
    let fields: Vec<&str> = diffs[0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["reason"], "only the reason differs: {report}");
}
