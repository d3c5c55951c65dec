//! An operator runs nats-server as deploy/nats/secure.conf says: TLS with client
//! certificates, each naming a SPIFFE ID in its URI SAN that the server takes as the user
//! (verify_and_map), and permissions per identity (permissions.conf). The admin's certificate
//! manages the streams; a node agent publishes its own telemetry and answers its own commands
//! and nothing else; the observer reads (subscribe, replay, the loop's progress) and makes,
//! pulls from, acknowledges and deletes no consumer; each phase publishes only its own
//! family; nobody reads another's replies or removes what a stream holds; a client without a
//! certificate gets nowhere.
//!
//! The certificates' subjects (`CN=node-n1`, `CN=mapek-plan`) name no user: every permission
//! granted here is granted to a SPIFFE ID, so each allowed operation also shows that the server
//! mapped the certificate by its URI SAN.

mod common;

use bytes::Bytes;
use common::secure::{Holder, mapek_as, secure_server_with_streams, security};
use common::{run, stderr, stdout, telemetry_len};
use mapek_domain::NodeId;

/// The subject n2's telemetry is checked under: the server maps it to its partition first.
fn n2_telemetry() -> String {
    let p = mapek_bus::layout::partition_of_node(
        &NodeId::new("n2").unwrap(),
        mapek_bus::layout::DEFAULT_PARTITIONS,
    );
    format!("mapek.monitor.{p}.n2")
}

/// Publishes `subject` through JetStream as `who` and expects it stored.
async fn stored(who: &Holder, subject: &str) {
    let sent = who
        .js
        .publish(subject.to_owned(), Bytes::from_static(b"{}"));
    let ack = sent.await.unwrap_or_else(|e| panic!("{subject}: {e}"));
    ack.await.unwrap_or_else(|e| panic!("{subject}: {e}"));
}

/// Tries what nobody but the admin may do to a stream, and expects each refused.
async fn cannot_remove_what_streams_hold(who: &mut Holder) {
    for api in [
        "$JS.API.STREAM.PURGE.MAPEK_PLAN",
        "$JS.API.STREAM.MSG.DELETE.MAPEK_PLAN",
        "$JS.API.STREAM.DELETE.MAPEK_PLAN",
        "$JS.API.STREAM.UPDATE.MAPEK_PLAN",
    ] {
        let _ = who.client.request(api, Bytes::from_static(b"{}")).await;
        who.refused(&format!("Publish to \"{api}\"")).await;
    }
}

/// Tries to read every reply, and those of `other` (an inbox prefix not the holder's), and
/// expects it refused.
async fn cannot_read_other_inboxes(who: &mut Holder, other: &str) {
    for inbox in ["_INBOX.>".to_owned(), format!("{other}.>")] {
        let _spy = who.client.subscribe(inbox.clone()).await.unwrap();
        who.refused(&format!("Subscription to \"{inbox}\"")).await;
    }
}

#[tokio::test]
async fn workers_and_agents_get_what_their_certificate_allows() {
    let (server, certs) = secure_server_with_streams().await;
    let url = server.url();

    // Agent n1 publishes its own telemetry.
    let mut own = mapek_as(&url, certs.path(), Some("agent-n1"));
    own.args(["publish", "--node", "n1", "--metric", "latency_ms=5"]);
    let out = run(own);
    assert!(out.status.success(), "own telemetry: {}", stderr(&out));
    assert!(stdout(&out).contains("1 stored"), "{}", stdout(&out));

    // ... and cannot pass itself off as n2.
    let mut other = mapek_as(&url, certs.path(), Some("agent-n1"));
    other.args(["publish", "--node", "n2", "--metric", "latency_ms=5"]);
    let out = run(other);
    assert!(
        !out.status.success(),
        "n1 published as n2: {}",
        stdout(&out)
    );

    // Nor may it create streams.
    let mut apply = mapek_as(&url, certs.path(), Some("agent-n1"));
    apply.args(["streams", "apply"]);
    assert!(!run(apply).status.success(), "an agent applied the streams");

    // Without a client certificate the server lets nobody in, and mapek says where it failed.
    let mut anonymous = mapek_as(&url, certs.path(), None);
    anonymous.args(["publish", "--node", "n1", "--metric", "latency_ms=5"]);
    let out = run(anonymous);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));

    // Only n1's own event was stored.
    let js = mapek_bus::connect_with(&url, &security(certs.path(), "mapek"))
        .await
        .expect("the admin's certificate connects");
    assert_eq!(telemetry_len(&js).await, 1);
}

#[tokio::test]
async fn an_agent_may_only_publish_its_telemetry_and_answer_its_commands() {
    let (server, certs) = secure_server_with_streams().await;
    let url = server.url();
    let mut n1 = Holder::connect(&url, certs.path(), "agent-n1").await;
    let execute = Holder::connect(&url, certs.path(), "execute").await;

    stored(&n1, "mapek.monitor.n1").await;
    let _ = n1.client.publish("mapek.monitor.n2", Bytes::new()).await;
    n1.refused(&format!("Publish to \"{}\"", n2_telemetry()))
        .await;

    // n1 answers its own commands, through the executor's own inbox.
    let mut commands = n1.client.subscribe("mapek.cmd.n1").await.unwrap();
    let answering = n1.client.clone();
    tokio::spawn(async move {
        while let Some(command) = futures::StreamExt::next(&mut commands).await {
            let reply = command.reply.expect("a command is a request");
            answering.publish(reply, "applied".into()).await.unwrap();
        }
    });
    n1.client.flush().await.unwrap();
    // A request can find no responder for a moment after the subscription (rarely, under
    // load): ask again, as the executor does, before judging.
    let mut answer = execute
        .client
        .request("mapek.cmd.n1", "reroute".into())
        .await;
    for _ in 0..5 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        answer = execute
            .client
            .request("mapek.cmd.n1", "reroute".into())
            .await;
    }
    assert_eq!(answer.expect("n1 answers").payload, "applied");

    // It cannot take n2's commands, nor slip an answer into the executor's inbox.
    let _spy = n1.client.subscribe("mapek.cmd.n2").await.unwrap();
    n1.refused("Subscription to \"mapek.cmd.n2\"").await;
    assert!(
        execute
            .client
            .request("mapek.cmd.n2", "reroute".into())
            .await
            .is_err(),
        "nobody may answer n2's commands but n2"
    );
    let _ = n1
        .client
        .publish("_INBOX_mapek_execute.forged", "applied".into())
        .await;
    n1.refused("Publish to \"_INBOX_mapek_execute.forged\"")
        .await;

    cannot_read_other_inboxes(&mut n1, "_INBOX_mapek_execute").await;
    cannot_remove_what_streams_hold(&mut n1).await;
}

/// The loop's side of the observer's test: a decision stored, the executor's durable consumer
/// on it, and a lease held.
async fn a_decision_waiting_for_the_executor(admin: &Holder) {
    let mut publisher = mapek_bus::Publisher::new(admin.js.clone());
    publisher
        .publish(&mapek_testkit::samples::decision())
        .await
        .unwrap();
    assert!(publisher.finish().await.all_acked());
    let plan = admin.js.get_stream("MAPEK_PLAN").await.unwrap();
    plan.create_consumer(async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("execute".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let leases = admin
        .js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: mapek_bus::progress::LEASE_BUCKET.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    leases.put("execute", "worker-a".into()).await.unwrap();
}

/// Runs `mapek` with `args` as the observer and returns what it printed.
fn mapek_as_observer(url: &str, certs: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = mapek_as(url, certs, Some("observer"));
    cmd.args(args);
    let out = run(cmd);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

#[tokio::test]
async fn the_observer_reads_the_log_and_changes_nothing() {
    let (server, certs) = secure_server_with_streams().await;
    let url = server.url();
    let admin = Holder::connect(&url, certs.path(), "mapek").await;
    a_decision_waiting_for_the_executor(&admin).await;
    let decision = mapek_testkit::samples::decision();

    // It follows decisions, replays an incident's story and reads the loop's progress.
    let args = [
        "subscribe",
        "decisions",
        "--all",
        "--until-idle",
        "--idle",
        "300ms",
    ];
    let followed = mapek_as_observer(&url, certs.path(), &args);
    assert!(followed.contains(decision.node.as_str()), "{followed}");
    let story = mapek_as_observer(&url, certs.path(), &["replay", "incident", "i-1"]);
    assert!(story.contains(&decision.rule), "{story}");
    let observer = Holder::connect(&url, certs.path(), "observer").await;
    let progress = mapek_bus::progress::loop_progress(&observer.js)
        .await
        .unwrap();
    let plan_progress = progress.iter().find(|s| s.stream == "MAPEK_PLAN").unwrap();
    let execute = &plan_progress.consumers[0];
    assert_eq!((execute.name.as_str(), execute.behind), ("execute", 1));
    assert_eq!(execute.owner.as_deref(), Some("worker-a"));

    // It may make, pull from, acknowledge or delete no consumer, named or not.
    let mut observer = observer;
    let refused_apis = [
        (
            "$JS.API.CONSUMER.CREATE.MAPEK_PLAN",
            r#"{"stream_name":"MAPEK_PLAN","config":{}}"#,
        ),
        (
            "$JS.API.CONSUMER.CREATE.MAPEK_PLAN",
            r#"{"stream_name":"MAPEK_PLAN","config":{"name":"execute","ack_policy":"none"}}"#,
        ),
        (
            "$JS.API.CONSUMER.CREATE.MAPEK_PLAN.execute",
            r#"{"stream_name":"MAPEK_PLAN","config":{"name":"execute","ack_policy":"none"}}"#,
        ),
        (
            "$JS.API.CONSUMER.DURABLE.CREATE.MAPEK_PLAN.execute",
            r#"{"stream_name":"MAPEK_PLAN","config":{"durable_name":"execute"}}"#,
        ),
        (
            "$JS.API.CONSUMER.MSG.NEXT.MAPEK_PLAN.execute",
            r#"{"batch":1}"#,
        ),
        ("$JS.API.CONSUMER.DELETE.MAPEK_PLAN.execute", "{}"),
    ];
    for (api, body) in refused_apis {
        let _ = observer.client.request(api, Bytes::from(body)).await;
        observer.refused(&format!("Publish to \"{api}\"")).await;
    }
    let ack = "$JS.ACK.MAPEK_PLAN.execute.1.1.1.0.0";
    let _ = observer.client.publish(ack, Bytes::new()).await;
    observer.refused(&format!("Publish to \"{ack}\"")).await;
    let _ = observer.client.publish("mapek.plan.n1", Bytes::new()).await;
    observer.refused("Publish to \"mapek.plan.n1\"").await;
    cannot_read_other_inboxes(&mut observer, "_INBOX_mapek_execute").await;
    cannot_remove_what_streams_hold(&mut observer).await;

    // The executor's consumer is as it was, the only one, with its decision undelivered.
    let mut plan = admin.js.get_stream("MAPEK_PLAN").await.unwrap();
    let info = plan.info().await.unwrap().clone();
    assert_eq!((info.state.messages, info.state.consumer_count), (1, 1));
    let execute = plan.consumer_info("execute").await.unwrap().clone();
    assert_eq!(
        (execute.num_pending, execute.delivered.stream_sequence),
        (1, 0)
    );
    assert_eq!(
        execute.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
}

#[tokio::test]
async fn each_phase_publishes_only_its_own_family() {
    let (server, certs) = secure_server_with_streams().await;
    let url = server.url();
    // (identity, what it publishes, what it may not: another phase's family)
    let phases = [
        ("analyze", Some("mapek.analyze.n1"), "mapek.plan.n1"),
        ("plan", Some("mapek.plan.n1"), "mapek.execute.n1"),
        ("execute", Some("mapek.execute.n1"), "mapek.knowledge.n1"),
        ("evaluate", Some("mapek.knowledge.n1"), "mapek.plan.n1"),
        ("project", None, "mapek.knowledge.n1"),
    ];
    for (phase, own, other) in phases {
        let mut worker = Holder::connect(&url, certs.path(), phase).await;
        if let Some(own) = own {
            stored(&worker, own).await;
        }
        let _ = worker.client.publish(other, Bytes::new()).await;
        worker.refused(&format!("Publish to \"{other}\"")).await;
        let _ = worker.client.publish(n2_telemetry(), Bytes::new()).await;
        worker
            .refused(&format!("Publish to \"{}\"", n2_telemetry()))
            .await;
        let other = if phase == "execute" {
            "_INBOX_mapek_plan"
        } else {
            "_INBOX_mapek_execute"
        };
        cannot_read_other_inboxes(&mut worker, other).await;
        cannot_remove_what_streams_hold(&mut worker).await;
    }
}

#[test]
fn agent_users_name_each_nodes_partition_under_every_count_given() {
    // While the partitions grow from 8 to 32, an agent may publish under either.
    let nodes: Vec<String> = (0..64).map(|i| format!("n{i}")).collect();
    let out = std::process::Command::new(common::repo().join("deploy/nats/agent-users.sh"))
        .args(&nodes)
        .env("PARTITIONS", "8 32")
        .output()
        .expect("run deploy/nats/agent-users.sh");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for (node, line) in nodes.iter().zip(text.lines()) {
        let id = NodeId::new(node).unwrap();
        let mut partitions: Vec<u32> = [8, 32]
            .map(|count| mapek_bus::layout::partition_of_node(&id, count))
            .to_vec();
        partitions.dedup();
        let subjects: Vec<String> = partitions
            .iter()
            .map(|p| format!("\"mapek.monitor.{p}.{node}\", "))
            .collect();
        let publish = format!("publish: [{}\"mapek.monitor.{node}\"", subjects.concat());
        assert!(line.contains(&publish), "{publish}\n{line}");
    }
}
