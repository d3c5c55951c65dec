//! A user publishes telemetry with `mapek publish` and follows it with `mapek subscribe`.

mod common;

use std::time::Duration;

use common::{mapek, run, run_with_input, stderr, stdout, subscribe_all};
use mapek_testkit::server_with_streams;

const LINES: &str = r#"{"node":"n1","ts":"2026-11-28T12:00:00Z","metrics":{"latency_ms":12.5,"loss":0.01}}
{"node":"n2","ts_ms":1795867201000,"metrics":{"cpu":0.97},"links":[{"peer":"n1","up":false,"latency_ms":4.0,"loss":0.2}]}
{"event_id":"mine-1","node":"n1","ts":"2026-11-28T12:00:02Z","metrics":{"latency_ms":14.0},"site":"dc2"}
"#;

#[tokio::test]
async fn published_lines_and_flags_come_back_in_order() {
    let (server, _js) = server_with_streams().await;
    let url = server.url();

    let mut publish = mapek(&url);
    publish.arg("publish");
    let out = run_with_input(publish, LINES.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains("published 3 events: 3 stored, 0 duplicates, 0 not acknowledged"),
        "{summary}"
    );
    assert!(summary.contains("events/s"), "{summary}");

    let mut flags = mapek(&url);
    flags.args([
        "publish",
        "--node",
        "n17",
        "--metric",
        "latency_ms=12.5",
        "--metric",
        "loss=0.01",
        "--link",
        "n1:up:3.5:0",
        "--ts",
        "2026-11-28T12:00:03Z",
    ]);
    let out = run(flags);
    assert!(out.status.success(), "{}", stderr(&out));

    let events = subscribe_all(&url, "telemetry", &[]);
    let nodes: Vec<&str> = events
        .iter()
        .map(|e| e["event"]["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n1", "n2", "n1", "n17"]);
    // Telemetry is split over two streams by partition (n1 and n2 in 0 and 1, n17 in 5);
    // each event says where its sequence counts.
    let places: Vec<(&str, u64)> = events
        .iter()
        .map(|e| (e["stream"].as_str().unwrap(), e["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        places,
        [
            ("MAPEK_MONITOR_0", 1),
            ("MAPEK_MONITOR_0", 2),
            ("MAPEK_MONITOR_0", 3),
            ("MAPEK_MONITOR_1", 1)
        ]
    );
    assert_eq!(events[0]["event"]["metrics"]["latency_ms"], 12.5);
    assert_eq!(events[0]["event"]["ts_ms"], 1_795_867_200_000i64);
    assert_eq!(events[1]["event"]["links"][0]["up"], false);
    assert_eq!(events[2]["event"]["event_id"], "mine-1");
    assert_eq!(events[2]["event"]["site"], "dc2");
    assert_eq!(events[3]["event"]["links"][0]["peer"], "n1");
    assert!(
        events[0]["subject"]
            .as_str()
            .unwrap()
            .starts_with("mapek.monitor."),
        "stored under the partitioned subject"
    );

    // Filters: one node; a sequence of that node's stream; a count.
    let n1 = subscribe_all(&url, "telemetry", &["--node", "n1"]);
    assert_eq!(n1.len(), 2);
    let from_3: Vec<_> = {
        let mut cmd = mapek(&url);
        cmd.args([
            "subscribe",
            "telemetry",
            "--node",
            "n1",
            "--seq",
            "3",
            "--json",
            "--until-idle",
        ]);
        stdout(&run(cmd)).lines().map(str::to_owned).collect()
    };
    assert_eq!(from_3.len(), 1, "{from_3:?}");
    // A sequence alone names no place when telemetry is in two streams: said so.
    let mut ambiguous = mapek(&url);
    ambiguous.args(["subscribe", "telemetry", "--seq", "3", "--until-idle"]);
    let out = run(ambiguous);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("split over 2 streams: start from a time instead"),
        "{}",
        stderr(&out)
    );
    let mut two = mapek(&url);
    two.args(["subscribe", "telemetry", "--all", "--count", "2", "--json"]);
    assert_eq!(stdout(&run(two)).lines().count(), 2);
}

#[tokio::test]
async fn the_table_shows_one_row_per_event() {
    let (server, _js) = server_with_streams().await;
    let mut publish = mapek(&server.url());
    publish.arg("publish");
    assert!(run_with_input(publish, LINES.as_bytes()).status.success());

    let mut table = mapek(&server.url());
    table.args([
        "subscribe",
        "telemetry",
        "--since",
        "1h",
        "--until-idle",
        "--idle",
        "300ms",
    ]);
    let out = run(table);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("SEQ") && lines[0].contains("METRICS"),
        "{text}"
    );
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].contains("2026-11-28T12:00:00Z") && lines[1].contains("latency_ms=12.5"));
    assert!(lines[2].contains("link:n1=down/4ms/0.2"), "{text}");
}

#[tokio::test]
async fn a_live_subscriber_sees_new_events_and_stops_on_ctrl_c() {
    let (server, _js) = server_with_streams().await;
    let mut follow = mapek(&server.url());
    follow
        .args(["subscribe", "telemetry", "--json"])
        .stdout(std::process::Stdio::piped());
    let child = follow.spawn().unwrap();
    // Give the subscriber time to start before publishing: it only sees new events.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut publish = mapek(&server.url());
    publish.args(["publish", "--node", "n5", "--metric", "cpu=0.5"]);
    assert!(run(publish).status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Ctrl-C ends it cleanly: {:?}",
        out.status
    );
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"node\":\"n5\""), "{text}");
}

#[tokio::test]
async fn the_help_of_every_command_is_complete() {
    for args in [
        vec!["--help"],
        vec!["publish", "--help"],
        vec!["subscribe", "--help"],
        vec!["streams", "apply", "--help"],
    ] {
        let mut cmd = mapek("nats://127.0.0.1:1");
        cmd.args(&args);
        let out = run(cmd);
        assert!(out.status.success(), "{args:?}");
        let text = stdout(&out);
        assert!(
            text.contains("MAPEK_NATS_URL"),
            "{args:?} shows the env var:\n{text}"
        );
        assert!(text.contains("default"), "{args:?} shows defaults:\n{text}");
    }
}

#[tokio::test]
async fn settings_come_from_the_file_then_the_environment_then_flags() {
    let (server, _js) = server_with_streams().await;
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("nats://127.0.0.1:{}", mapek_testkit::nats::free_port());
    std::fs::write(
        dir.path().join("mapek.toml"),
        format!("[nats]\nurl = \"{}\"\n", server.url()),
    )
    .unwrap();
    let publish = |env_url: Option<&str>, flag_url: Option<&str>| {
        let mut cmd = mapek("unused");
        cmd.env_remove("MAPEK_NATS_URL").current_dir(dir.path());
        if let Some(url) = env_url {
            cmd.env("MAPEK_NATS_URL", url);
        }
        cmd.arg("publish")
            .args(["--node", "n1", "--metric", "cpu=0.1"]);
        if let Some(url) = flag_url {
            cmd.args(["--nats-url", url]);
        }
        run(cmd)
    };
    // ./mapek.toml alone points at the server.
    assert!(publish(None, None).status.success());
    // The environment beats the file.
    let out = publish(Some(&nowhere), None);
    assert!(
        stderr(&out).contains(&format!("cannot reach NATS at {nowhere}")),
        "{}",
        stderr(&out)
    );
    // A flag beats the environment.
    assert!(
        publish(Some(&nowhere), Some(&server.url()))
            .status
            .success()
    );

    // A config file with an unknown key is named, with the key.
    std::fs::write(dir.path().join("bad.toml"), "[nats]\nulr = \"x\"\n").unwrap();
    let mut cmd = mapek("unused");
    cmd.current_dir(dir.path())
        .args(["--config", "bad.toml", "streams", "apply"]);
    let out = run(cmd);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("bad.toml") && stderr(&out).contains("ulr"),
        "{}",
        stderr(&out)
    );
}
