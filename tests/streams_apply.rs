//! `mapek streams apply` creates the streams in the layout the server allows, changes nothing
//! the second time, and updates what differs from a definition.

mod common;

use common::{mapek, run, stderr, stdout, telemetry_len};
use mapek_bus::layout;
use mapek_domain::{NodeId, Telemetry};
use mapek_testkit::NatsServer;

const OTHER_STREAMS: [&str; 6] = [
    "MAPEK_ANALYZE",
    "MAPEK_PLAN",
    "MAPEK_EXECUTE",
    "MAPEK_KNOWLEDGE",
    "MAPEK_SHADOW",
    "MAPEK_DLQ",
];

/// Runs `mapek streams apply <extra>` against `url`.
fn apply_streams(url: &str, extra: &[&str]) -> std::process::Output {
    let mut apply = mapek(url);
    apply.args(["streams", "apply"]).args(extra);
    run(apply)
}

/// Connects to `server` and makes a stream of its own there, `name` on `subject`.
async fn with_stream(server: &NatsServer, name: &str, subject: &str) -> mapek_bus::JetStream {
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

#[test]
fn apply_on_a_mapping_server_splits_telemetry_over_two_streams_then_changes_nothing() {
    let server = NatsServer::start();
    let mut first = mapek(&server.url());
    first.args(["streams", "apply"]);
    let out = run(first);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("telemetry: the server maps it into 8 partitions, stored in 2 streams"),
        "{text}"
    );
    for name in ["MAPEK_MONITOR_0", "MAPEK_MONITOR_1"]
        .into_iter()
        .chain(OTHER_STREAMS)
    {
        assert!(text.contains(&format!("{name}: created")), "{text}");
    }
    assert!(!text.contains("MAPEK_MONITOR:"), "{text}");
    assert!(text.contains("9 created, 0 updated, 0 unchanged"), "{text}");

    let mut second = mapek(&server.url());
    second.args(["streams", "apply"]);
    let text = stdout(&run(second));
    assert!(
        text.contains("nothing changed: all 9 streams match their definitions"),
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
    assert!(text.contains("0 created, 1 updated, 8 unchanged"), "{text}");
}

#[test]
fn apply_without_the_mapping_keeps_telemetry_in_one_stream() {
    let server = NatsServer::start_without_mapping();
    let out = apply_streams(&server.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("telemetry: one stream, MAPEK_MONITOR (the server does not map"),
        "{text}"
    );
    for name in std::iter::once("MAPEK_MONITOR").chain(OTHER_STREAMS) {
        assert!(text.contains(&format!("{name}: created")), "{text}");
    }
    assert!(text.contains("8 created, 0 updated, 0 unchanged"), "{text}");
}

/// Publishes one sample for each of `nodes` nodes, as an agent does.
async fn publish_one_each(url: &str, nodes: usize) -> mapek_bus::JetStream {
    let js = mapek_bus::connect(url).await.unwrap();
    let mut publisher = mapek_bus::Publisher::new(js.clone());
    for i in 0..nodes {
        let node = NodeId::new(format!("n{i}")).unwrap();
        let sample = Telemetry::new(node, 1_795_867_200_000, [("cpu".to_owned(), 0.5)].into());
        publisher.publish(&sample).await.unwrap();
    }
    assert_eq!(publisher.finish().await.acked, nodes as u64);
    js
}

#[tokio::test]
async fn telemetry_lands_in_the_stream_that_holds_its_nodes_partition() {
    // Given: a mapping server with four monitor streams.
    let server = NatsServer::start();
    let out = apply_streams(&server.url(), &["--monitor-streams", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("stored in 4 streams"),
        "{}",
        stdout(&out)
    );

    // When: agents publish to mapek.monitor.<node>, unaware of partitions.
    let js = publish_one_each(&server.url(), 64).await;

    // Then: each sample is stored once, under its partition, in the stream holding it.
    let streams = layout::streams_of(&js, mapek_domain::Phase::Monitor)
        .await
        .unwrap();
    assert_eq!(streams.len(), 4);
    assert_eq!(telemetry_len(&js).await, 64);
    for i in 0..64 {
        let node = NodeId::new(format!("n{i}")).unwrap();
        let partition = layout::partition_of_node(&node, mapek_bus::layout::DEFAULT_PARTITIONS);
        let holder = streams.iter().find(|s| s.holds(partition)).unwrap();
        let stream = js.get_stream(&holder.name).await.unwrap();
        let subject = format!("mapek.monitor.{partition}.{node}");
        let stored = stream.get_last_raw_message_by_subject(&subject).await;
        assert!(stored.is_ok(), "{subject} not in {}", holder.name);
    }
}

/// The partition count MAPEK_PLAN's transform names on the server `js` is connected to.
async fn plan_partitions(js: &mapek_bus::JetStream) -> Option<u32> {
    let stream = js.get_stream("MAPEK_PLAN").await.unwrap();
    let transform = stream.cached_info().config.subject_transform.clone()?;
    layout::partitions_in_transform(&transform.destination)
}

#[tokio::test]
async fn apply_takes_the_partition_count_the_servers_mapping_names() {
    // Given: a server whose mapping puts telemetry into 32 partitions.
    let mapping = mapek_domain::telemetry_mapping(32);
    let server = NatsServer::start_with_options(&mapping, &[], false);

    // When: streams are applied with four monitor streams and no count.
    let out = apply_streams(&server.url(), &["--monitor-streams", "4"]);

    // Then: every phase has 32 partitions, 8 in each monitor stream.
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "partitions: 32; telemetry: the server maps it into 32 partitions, stored in 4 streams"
        ),
        "{text}"
    );
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    let streams = layout::streams_of(&js, mapek_domain::Phase::Monitor)
        .await
        .unwrap();
    assert_eq!(streams.len(), 4);
    assert_eq!(streams[3].partitions, (24..32).collect::<Vec<_>>());
    assert_eq!(plan_partitions(&js).await, Some(32));
    for phase in mapek_domain::Phase::ALL {
        if phase != mapek_domain::Phase::Dlq {
            assert_eq!(
                layout::partitions_of(&js, phase).await.unwrap(),
                32,
                "{phase}"
            );
        }
    }

    // And: a second apply keeps what the server has, four streams and all.
    let text = stdout(&apply_streams(&server.url(), &[]));
    assert!(
        text.contains("nothing changed: all 11 streams match"),
        "{text}"
    );

    // And: asking for a count the mapping does not name says which line to change.
    let out = apply_streams(&server.url(), &["--partitions", "8"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("maps telemetry into 32 partitions and 8 were asked for")
            && err.contains(mapek_domain::TELEMETRY_MAPPING),
        "{err}"
    );

    // And: a node's telemetry lands in its partition of the 32.
    let js = publish_one_each(&server.url(), 64).await;
    for i in 0..64 {
        let node = NodeId::new(format!("n{i}")).unwrap();
        let partition = layout::partition_of_node(&node, 32);
        let holder = streams.iter().find(|s| s.holds(partition)).unwrap();
        let stream = js.get_stream(&holder.name).await.unwrap();
        let subject = format!("mapek.monitor.{partition}.{node}");
        let stored = stream.get_last_raw_message_by_subject(&subject).await;
        assert!(stored.is_ok(), "{subject} not in {}", holder.name);
    }
}

#[tokio::test]
async fn without_the_mapping_the_count_is_kept_until_it_grows_by_a_multiple() {
    // Given: a server that does not map telemetry.
    let server = NatsServer::start_without_mapping();

    // When: streams are applied with 32 partitions.
    let out = apply_streams(&server.url(), &["--partitions", "32"]);

    // Then: telemetry's one stream and every phase map nodes into 32 partitions.
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("partitions: 32; telemetry: one stream"));
    let js = mapek_bus::connect(&server.url()).await.unwrap();
    assert_eq!(
        layout::partitions_of(&js, mapek_domain::Phase::Monitor)
            .await
            .unwrap(),
        32
    );
    assert_eq!(plan_partitions(&js).await, Some(32));

    // And: an apply that names no count keeps 32.
    let text = stdout(&apply_streams(&server.url(), &[]));
    assert!(
        text.contains("nothing changed: all 8 streams match"),
        "{text}"
    );

    // And: a count that is not a multiple is refused, naming the stream and why; nothing
    // changes.
    let out = apply_streams(&server.url(), &["--partitions", "16"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("holds 32 partitions and 16 were asked for")
            && err.contains("grows only by a multiple of 32")
            && err.contains("0024"),
        "{err}"
    );
    assert_eq!(plan_partitions(&js).await, Some(32));

    // And: a multiple grows every phase's transform, telemetry's too.
    let out = apply_streams(&server.url(), &["--partitions", "64"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("MAPEK_MONITOR: updated subject_transform")
            && text.contains("0 created, 6 updated, 2 unchanged"),
        "{text}"
    );
    assert_eq!(plan_partitions(&js).await, Some(64));
}

#[tokio::test]
async fn an_old_telemetry_stream_with_events_stops_the_switch_with_what_to_do() {
    // Given: a server that kept telemetry in one stream, then got the mapping.
    let server = NatsServer::start();
    let js = with_stream(&server, "MAPEK_MONITOR", "mapek.legacy.>").await;
    js.publish("mapek.legacy.n1", "old".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // When: streams are applied.
    let out = apply_streams(&server.url(), &[]);

    // Then: it stops, saying what holds what and how to go on; nothing is deleted.
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("MAPEK_MONITOR") && err.contains("holds 1 events") && err.contains("delete"),
        "{err}"
    );
    assert!(js.get_stream("MAPEK_MONITOR").await.is_ok());
    assert!(js.get_stream("MAPEK_MONITOR_0").await.is_err());

    // And: once it is empty, apply deletes it and goes on.
    js.get_stream("MAPEK_MONITOR")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let out = apply_streams(&server.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("MAPEK_MONITOR: deleted (it was empty"),
        "{}",
        stdout(&out)
    );
    assert!(js.get_stream("MAPEK_MONITOR").await.is_err());
}

#[tokio::test]
async fn monitor_streams_on_a_server_that_lost_its_mapping_are_an_error() {
    // Given: the split layout's streams on a server that does not map telemetry.
    let server = NatsServer::start_without_mapping();
    let js = with_stream(&server, "MAPEK_MONITOR_0", "mapek.monitor.0.*").await;

    // When: streams are applied.
    let out = apply_streams(&server.url(), &[]);

    // Then: it stops and says to put the mapping back.
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("MAPEK_MONITOR_0") && err.contains("Put the mapping back"),
        "{err}"
    );
    assert!(js.get_stream("MAPEK_MONITOR").await.is_err());
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

#[test]
fn the_shipped_server_configs_map_telemetry_as_the_test_servers_do() {
    let nats = common::repo().join("deploy/nats");
    let mapping = std::fs::read_to_string(nats.join("mapping.conf")).unwrap();
    assert!(
        mapping
            .lines()
            .any(|l| l.trim() == mapek_domain::TELEMETRY_MAPPING),
        "deploy/nats/mapping.conf does not hold {}",
        mapek_domain::TELEMETRY_MAPPING
    );
    for (config, include) in [
        ("single.conf", "include ./mapping.conf"),
        ("secure.conf", "include ./mapping.conf"),
        ("cluster/n1.conf", "include ../mapping.conf"),
        ("cluster/n2.conf", "include ../mapping.conf"),
        ("cluster/n3.conf", "include ../mapping.conf"),
    ] {
        let text = std::fs::read_to_string(nats.join(config)).unwrap();
        assert!(text.lines().any(|l| l.trim() == include), "{config}");
    }
}

#[test]
fn apply_with_more_replicas_than_servers_up_waits_then_says_what_to_start() {
    // Given: a cluster of two servers, where streams of three replicas have no room.
    let cluster = mapek_testkit::NatsCluster::start(2);

    // When: the streams are applied with three replicas.
    let started = std::time::Instant::now();
    let mut apply = mapek(&cluster.url());
    apply.args(["streams", "apply", "--replicas", "3"]);
    let out = run(apply);

    // Then: apply asked again for the placement wait, as a cluster still starting needs,
    // then failed with what to do.
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no 3 servers up to place it on"), "{err}");
    assert!(
        err.contains("no 3 servers with JetStream were up to place its replicas on within 30 s")
            && err.contains("Start the cluster's missing servers"),
        "{err}"
    );
    assert!(started.elapsed() >= mapek_bus::streams::PLACEMENT_WAIT);
}
