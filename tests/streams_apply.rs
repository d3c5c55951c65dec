//! `mapek streams apply` creates the six streams, changes nothing the second time, and
//! updates what differs from a definition.

mod common;

use common::{mapek, run, stderr, stdout};
use mapek_testkit::NatsServer;

#[test]
fn apply_creates_the_six_streams_then_changes_nothing() {
    let server = NatsServer::start();
    let mut first = mapek(&server.url());
    first.args(["streams", "apply"]);
    let out = run(first);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for name in [
        "MAPEK_MONITOR",
        "MAPEK_ANALYZE",
        "MAPEK_PLAN",
        "MAPEK_EXECUTE",
        "MAPEK_KNOWLEDGE",
        "MAPEK_DLQ",
    ] {
        assert!(text.contains(&format!("{name}: created")), "{text}");
    }
    assert!(text.contains("6 created, 0 updated, 0 unchanged"), "{text}");

    let mut second = mapek(&server.url());
    second.args(["streams", "apply"]);
    let text = stdout(&run(second));
    assert!(
        text.contains("nothing changed: all 6 streams match their definitions"),
        "{text}"
    );
    assert!(
        !text.contains("created") && !text.contains("updated"),
        "{text}"
    );
}

#[test]
fn apply_updates_only_the_keys_that_differ() {
    let server = NatsServer::start();
    let mut first = mapek(&server.url());
    first.args(["streams", "apply"]);
    assert!(run(first).status.success());

    let dir = tempfile::tempdir().unwrap();
    let streams = concat!(env!("CARGO_MANIFEST_DIR"), "/../../streams");
    for entry in std::fs::read_dir(streams).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let mut text = std::fs::read_to_string(&path).unwrap();
            if path.ends_with("MAPEK_PLAN.json") {
                // 14 days instead of 7.
                text = text.replace("604800000000000", "1209600000000000");
            }
            std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
        }
    }
    let mut update = mapek(&server.url());
    update.args(["streams", "apply", "--dir"]).arg(dir.path());
    let out = run(update);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("MAPEK_PLAN: updated max_age"), "{text}");
    assert!(text.contains("0 created, 1 updated, 5 unchanged"), "{text}");
}

#[test]
fn a_bad_definition_is_named_with_what_is_wrong() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("BROKEN.json"),
        r#"{"name": "BROKEN", "subjects": ["x.>"], "max_agee": 5}"#,
    )
    .unwrap();
    let mut apply = mapek(&server.url());
    apply.args(["streams", "apply", "--dir"]).arg(dir.path());
    let out = run(apply);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("BROKEN.json") && err.contains("max_agee"),
        "{err}"
    );
}

#[test]
fn no_server_is_a_sentence_not_a_backtrace() {
    let port = mapek_testkit::nats::free_port();
    let mut apply = mapek(&format!("nats://127.0.0.1:{port}"));
    apply.args(["streams", "apply"]);
    let out = run(apply);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach NATS at nats://127.0.0.1:{port}"))
            && err.contains("MAPEK_NATS_URL"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
