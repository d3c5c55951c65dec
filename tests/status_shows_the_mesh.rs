//! A user asks `mapek status` how the mesh is: nodes by health, open incidents, recent
//! actions; from the SQL read model, from Redis, and after `mapek knowledge rebuild`. The
//! same whether the server splits telemetry over two streams (it maps it into partitions) or
//! keeps it in one.

mod common;
mod knowledge_log;

use std::time::Duration;

use common::{mapek, run, stderr, stdout, stream_len};
use knowledge_log::publish_scripted_run;
use mapek_bus::{JetStream, layout};
use mapek_domain::Phase;
use mapek_knowledge::{ProjectionConfig, ProjectionStats, ReadModel, Redis, project_with};
use mapek_testkit::{NatsServer, TestRedis};
use mapek_testkit::{server_with_one_telemetry_stream, server_with_streams};

fn status(url: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = mapek(url);
    cmd.arg("status").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(cmd);
    assert!(
        out.status.success(),
        "mapek status failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn check_json(text: &str, source: &str) {
    let v: serde_json::Value = serde_json::from_str(text).expect("status --json is JSON");
    assert_eq!(v["source"], source);
    let nodes: Vec<(String, String)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().into(),
                n["health"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [("n1", "ok"), ("n2", "degraded"), ("n3", "silent")]
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(nodes, want, "nodes from {source}");
    let open = v["open_incidents"].as_array().unwrap();
    assert_eq!(open.len(), 1, "one open incident from {source}");
    assert_eq!(open[0]["incident_id"], "inc-b");
    assert_eq!(open[0]["kind"], "cpu_saturation");
    let actions: Vec<&str> = v["recent_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["refused", "applied"],
        "newest first, from {source}"
    );
    let escalated = &v["recent_actions"][0]["escalation"];
    assert_eq!(
        escalated["team"], "netops",
        "the refusal's escalation, from {source}"
    );
}

#[tokio::test]
async fn status_shows_nodes_incidents_and_actions() {
    // The server maps telemetry into partitions: n1 and n2 are in MAPEK_MONITOR_0, n3 in
    // MAPEK_MONITOR_1.
    let (server, js) = server_with_streams().await;
    shows_the_scripted_run(server, js, &["MAPEK_MONITOR_0", "MAPEK_MONITOR_1"]).await;
}

#[tokio::test]
async fn status_shows_the_mesh_of_a_server_that_keeps_telemetry_in_one_stream() {
    let (server, js) = server_with_one_telemetry_stream().await;
    shows_the_scripted_run(server, js, &["MAPEK_MONITOR"]).await;
}

/// Projects the scripted run from the streams `monitor` and checks what `mapek status` and
/// `mapek knowledge rebuild` say of it.
async fn shows_the_scripted_run(server: NatsServer, js: JetStream, monitor: &[&str]) {
    let script = publish_scripted_run(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("knowledge.sqlite");
    let sqlite = sqlite.to_str().unwrap();
    let redis = TestRedis::new();

    let model = ReadModel::connect(sqlite).await.unwrap();
    model.migrate().await.unwrap();
    let hot = Redis::connect_with_prefix(redis.url(), redis.prefix())
        .await
        .unwrap();
    let config = ProjectionConfig {
        until_caught_up: true,
        ..ProjectionConfig::default()
    };
    let stats = ProjectionStats::default();
    tokio::time::timeout(
        Duration::from_secs(60),
        project_with(
            js.clone(),
            model.clone(),
            Some(hot),
            config,
            stats.clone(),
            std::future::pending(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stats.total(|c| &c.redis_failures), 0);
    // Each monitor stream is projected on its own, through all it holds.
    assert_eq!(stats.phase(Phase::Monitor).applied, script.telemetry as u64);
    let offsets = model.offsets().await.unwrap();
    let mut projected = Vec::new();
    for (stream, seq) in &offsets {
        if layout::phase_of_stream(stream) == Some(Phase::Monitor) {
            assert_eq!(*seq, stream_len(&js, stream).await, "{stream}");
            assert_eq!(
                stats.stream(stream).map(|c| c.applied),
                Some(*seq),
                "{stream}"
            );
            projected.push(stream.as_str());
        }
    }
    assert_eq!(projected, monitor, "an offset per monitor stream");

    let url = server.url();
    let text = status(&url, &["--database-url", sqlite], &[]);
    assert!(
        text.contains("nodes: 3 (1 ok, 1 degraded, 1 silent), from sql"),
        "{text}"
    );
    assert!(text.contains("open incidents: 1"), "{text}");
    assert!(text.contains("cpu_saturation"), "{text}");
    assert!(text.contains("recent actions: 2"), "{text}");
    assert!(
        text.contains("cooldown: n2 was acted on 10 s ago; escalated to a human (team=netops)"),
        "{text}"
    );
    check_json(
        &status(&url, &["--database-url", sqlite, "--json"], &[]),
        "sql",
    );

    let env = [
        ("REDIS_URL", redis.url()),
        ("MAPEK_REDIS_PREFIX", redis.prefix()),
    ];
    let text = status(&url, &[], &env);
    assert!(
        text.contains("nodes: 3 (1 ok, 1 degraded, 1 silent), from redis"),
        "{text}"
    );
    check_json(&status(&url, &["--json"], &env), "redis");

    // A rebuild from the log into another file reads the same.
    let rebuilt = dir.path().join("rebuilt.sqlite");
    let rebuilt = rebuilt.to_str().unwrap();
    let mut cmd = mapek(&url);
    cmd.args(["knowledge", "rebuild", "--database-url", rebuilt]);
    // The incident index too, in this test's directory: the other layout's test rebuilds
    // at the same time.
    cmd.arg("--data-dir").arg(dir.path());
    let out = run(cmd);
    assert!(out.status.success(), "rebuild failed: {}", stderr(&out));
    let said = stdout(&out);
    // One count per stream, the names `nats stream ls` shows.
    let mut total = 0;
    for stream in monitor {
        let n = stream_len(&js, stream).await;
        assert!(said.contains(&format!("{stream} {n} events")), "{said}");
        total += n;
    }
    assert_eq!(total, 44, "{said}");
    assert!(said.contains("MAPEK_PLAN 2 events (1 skipped"), "{said}");
    check_json(
        &status(&url, &["--database-url", rebuilt, "--json"], &[]),
        "sql",
    );
}

#[test]
fn status_without_a_read_model_says_what_to_do() {
    let mut cmd = mapek("nats://127.0.0.1:1");
    let dir = tempfile::tempdir().unwrap();
    cmd.arg("status").current_dir(dir.path());
    let out = run(cmd);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no read model at mapek-data/knowledge.sqlite")
            && err.contains("mapek knowledge rebuild"),
        "{err}"
    );

    let mut cmd = mapek("nats://127.0.0.1:1");
    cmd.args([
        "status",
        "--database-url",
        "postgres://me:secret@127.0.0.1:1/x",
    ]);
    let out = run(cmd);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the read model at postgres://me:***@127.0.0.1:1/x")
            && !err.contains("secret"),
        "{err}"
    );
}

/// `mapek status --loop --json`, parsed.
fn loop_json(url: &str) -> serde_json::Value {
    serde_json::from_str(&status(url, &["--loop", "--json"], &[])).expect("JSON")
}

/// The reader `name` of `stream` in a `mapek status --loop --json` document.
fn reader<'a>(doc: &'a serde_json::Value, stream: &str, name: &str) -> &'a serde_json::Value {
    let s = doc["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == stream)
        .unwrap_or_else(|| panic!("no {stream} in {doc}"));
    s["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no reader {name} of {stream} in {doc}"))
}

#[tokio::test]
async fn status_shows_how_far_behind_each_reader_is_and_who_reads_it() {
    use mapek_bus::{Inbox, InboxConfig, Publisher, StartAt};
    use mapek_domain::{NodeId, Telemetry};

    let (server, js) = server_with_streams().await;
    let url = server.url();
    // A bad message first, then 30 good ones, all from n1: one partition, one stream.
    let node = NodeId::new("n1").unwrap();
    let p = layout::partition_of_node(&node, mapek_bus::layout::DEFAULT_PARTITIONS);
    let stream = layout::stream_for(&js, Phase::Monitor, Some(p))
        .await
        .unwrap();
    js.publish("mapek.monitor.n1", "not avro".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut publisher = Publisher::new(js.clone());
    for i in 0..30 {
        let t: Telemetry = mapek_testkit::samples::telemetry("n1", 1_000 * (i + 1), 20.0);
        publisher.publish(&t).await.unwrap();
    }
    assert!(publisher.finish().await.all_acked());

    // Nobody reads yet: no durable reader, nothing behind.
    let doc = loop_json(&url);
    assert_eq!(doc["behind"], 0, "{doc}");
    let text = status(&url, &["--loop"], &[]);
    assert!(
        text.contains(stream.as_str()) && text.contains("(no durable reader)"),
        "{text}"
    );

    // A worker leases the partition and takes a first batch of ten: the bad message is
    // dead-lettered, nine good ones are handed out, and it acknowledges the sixth.
    let mut leases = mapek_loop::lease::Leases::open(&js, "worker-a", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(leases.try_acquire(&format!("analyze.p{p}")).await.unwrap());
    let mut config = InboxConfig::new(format!("analyze-p{p}"));
    config.filter = Some(format!("mapek.monitor.{p}.>"));
    config.batch = 10;
    let mut inbox = Inbox::<Telemetry>::open(&js, config).await.unwrap();
    let mut batch = Vec::new();
    while batch.len() < 6 {
        batch.extend(inbox.next_batch(Duration::from_secs(5)).await.unwrap());
    }
    batch[5].ack().await.unwrap();
    let acked = batch[5].stream_seq();
    assert_eq!(acked, 7, "the bad message was the first");

    let name = format!("analyze-p{p}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let doc = loop_json(&url);
        if reader(&doc, &stream, &name)["ack_floor"] == acked
            || std::time::Instant::now() > deadline
        {
            break doc;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = reader(&doc, &stream, &name);
    assert_eq!(r["ack_floor"], acked, "{doc}");
    assert_eq!(r["behind"], 31 - acked, "{doc}");
    assert_eq!(r["filter"], format!("mapek.monitor.{p}.>"), "{doc}");
    assert_eq!(r["owner"], "worker-a", "{doc}");
    assert_eq!(doc["behind"], 31 - acked, "{doc}");
    let dlq = doc["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["phase"] == "dlq")
        .expect("the dead letters' stream");
    assert_eq!(dlq["messages"], 1, "{doc}");
    // Each stream names the partitions it holds: the telemetry stream of this reader holds
    // its partition among others, the decisions' stream all 8.
    let holds = |stream: &str| -> Vec<u64> {
        let streams = doc["streams"].as_array().unwrap();
        let s = streams.iter().find(|s| s["stream"] == stream).unwrap();
        let partitions = s["partitions"].as_array().unwrap();
        partitions.iter().map(|p| p.as_u64().unwrap()).collect()
    };
    assert!(holds(&stream).contains(&u64::from(p)), "{doc}");
    assert_eq!(holds("MAPEK_PLAN"), (0..8).collect::<Vec<_>>(), "{doc}");

    let text = status(&url, &["--loop"], &[]);
    assert!(
        text.contains(&format!(
            "on 8 streams, 8 partitions, at {url}, {} messages behind",
            31 - acked
        )),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("no row for {name}: {text}"));
    assert!(
        row.contains("worker-a") && row.contains(&format!(" {} ", 31 - acked)),
        "{row}"
    );

    // Once the worker has taken and acknowledged everything, nothing is behind.
    loop {
        let more = inbox.next_batch(Duration::from_secs(1)).await.unwrap();
        let Some(last) = more.last() else { break };
        last.ack().await.unwrap();
        if last.stream_seq() == 31 {
            break;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while loop_json(&url)["behind"] != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(loop_json(&url)["behind"], 0);

    // Someone follows the partition's telemetry with `mapek subscribe`'s reader: it makes no
    // consumer, so nothing about the loop's readers changes.
    let filter = format!("mapek.monitor.{p}.>");
    let mut follower =
        mapek_bus::Subscriber::<Telemetry>::open_subject(&js, filter.clone(), StartAt::All)
            .await
            .unwrap();
    assert!(follower.next().await.unwrap().is_ok());
    let ephemeral = |doc: &serde_json::Value| -> Vec<serde_json::Value> {
        let streams = doc["streams"].as_array().unwrap();
        streams
            .iter()
            .filter(|s| s["stream"] == stream)
            .flat_map(|s| s["consumers"].as_array().unwrap().clone())
            .filter(|c| c["durable"] == false)
            .collect()
    };
    let doc = loop_json(&url);
    assert!(ephemeral(&doc).is_empty(), "{doc}");

    // A consumer of someone's own without a name (another tool's, a projection's rebuild) is
    // listed apart, and the loop's backlog does not count it.
    let handle = js.get_stream(&stream).await.unwrap();
    let _other = handle
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let doc = loop_json(&url);
    let followers = ephemeral(&doc);
    assert_eq!(followers.len(), 1, "{doc}");
    assert_eq!(followers[0]["filter"], filter, "{doc}");
    assert!(followers[0]["owner"].is_null(), "{doc}");
    assert_eq!(reader(&doc, &stream, &name)["durable"], true, "{doc}");
    assert_eq!(doc["behind"], 0, "{doc}");
    let text = status(&url, &["--loop"], &[]);
    assert!(
        text.contains("and 1 subscriber on") && text.contains("(subscriber, not the loop's)"),
        "{text}"
    );
    drop(follower);
    leases.release_all().await;
}

#[test]
fn status_of_the_mesh_says_when_the_nats_server_does_not_answer() {
    // The mesh part needs a read model; the loop part only says it could not ask.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("knowledge.sqlite");
    std::fs::File::create(&sqlite).unwrap();
    let text = status(
        "nats://127.0.0.1:1",
        &["--database-url", sqlite.to_str().unwrap()],
        &[],
    );
    assert!(text.contains("nodes: 0"), "{text}");
    assert!(
        text.contains("loop: cannot ask nats://127.0.0.1:1"),
        "{text}"
    );

    let mut cmd = mapek("nats://127.0.0.1:1");
    cmd.args(["status", "--loop"]);
    let out = run(cmd);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("asking the NATS server at nats://127.0.0.1:1"),
        "{err}"
    );
}
