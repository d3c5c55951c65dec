//! What the execute and evaluate tests share: a server with the streams, a node agent that
//! answers commands over real NATS, and ways to publish decisions and read results back.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mapek_bus::command::{Command, CommandReply, Commands};
use mapek_bus::{JetStream, Publisher, Subscriber, SubscriberConfig};
use mapek_codec::AvroEvent;
use mapek_domain::{Action, ActionKind, Decision, ExecuteConfig, NodeId, Policy};
use mapek_testkit::NatsServer;

/// Event time of the tests' first decision: 2026-11-28T12:00:00Z.
pub const T0: i64 = 1_795_867_200_000;

/// The node whose agent listens but never answers.
pub const SILENT: &str = "n9";

/// The policy [`decision`]s name, which lets every node act (tests/policies/roomy.toml).
pub const ROOMY_POLICY: &str = include_str!("../policies/roomy.toml");

/// A fresh nats-server with mapek's streams, [`ROOMY_POLICY`] recorded, a JetStream context and
/// a plain client.
pub async fn setup() -> (NatsServer, JetStream, async_nats::Client) {
    let (server, js) = mapek_testkit::server_with_streams().await;
    mapek_bus::config_store::record_policy(&js, ROOMY_POLICY)
        .await
        .unwrap();
    let client = mapek_bus::connect_client(&server.url()).await.unwrap();
    (server, js, client)
}

/// Analyze as `mapek run` runs it: a worker per partition of the telemetry (on the monitor
/// stream that holds it), reading every 100 ms, until `stop` turns true.
pub fn analyze_by_partition(
    js: &JetStream,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Result<mapek_loop::StageStats, mapek_bus::BusError>>> {
    (0..mapek_bus::layout::DEFAULT_PARTITIONS)
        .map(|p| {
            let mut config = mapek_loop::StageConfig::new("analyze", Some(p));
            config.fetch_wait = Duration::from_millis(100);
            let mut stop = stop.clone();
            tokio::spawn(mapek_loop::run_stage(
                js.clone(),
                mapek_domain::Analyzer::new(mapek_domain::AnalyzeConfig::default()),
                config,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ))
        })
        .collect()
}

/// A config with short timeouts, so a test that waits for a missing reply is quick.
pub fn quick() -> ExecuteConfig {
    ExecuteConfig {
        command_timeout_ms: 200,
        approval_poll_ms: 100,
        ..ExecuteConfig::default()
    }
}

/// The commands an agent received, in order: (node, decision id).
pub type Received = Arc<Mutex<Vec<(String, String)>>>;

/// Starts a node agent for every node (`mapek.cmd.*`) on its own connection. It applies every
/// action but quarantine, which it refuses; the agent of [`SILENT`] never answers.
pub async fn start_agent(url: &str) -> Received {
    let client = mapek_bus::connect_client(url).await.unwrap();
    let mut commands = Commands::subscribe(&client, None).await.unwrap();
    client.flush().await.unwrap();
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        while let Some(incoming) = commands.next().await {
            let Ok(Command {
                decision_id,
                action,
            }) = &incoming.command
            else {
                continue;
            };
            log.lock()
                .unwrap()
                .push((incoming.node.to_string(), decision_id.clone()));
            let reply = match action.kind {
                _ if incoming.node.as_str() == SILENT => continue,
                ActionKind::Quarantine => {
                    CommandReply::failed(format!("{} refuses to leave the mesh", incoming.node))
                }
                kind => CommandReply::applied(format!("{} on {}", kind.as_str(), incoming.node)),
            };
            incoming.respond(&client, &reply).await.unwrap();
        }
    });
    received
}

/// A decision named `name` to take `kind` on `node`, `secs` seconds after [`T0`].
pub fn decision(name: &str, node: &str, kind: ActionKind, secs: i64) -> Decision {
    Decision {
        decision_id: format!("d-{name}"),
        symptom_id: format!("s-{name}"),
        incident_id: format!("i-{node}"),
        node: NodeId::new(node).unwrap(),
        ts_ms: T0 + secs * 1000,
        action: Action {
            kind,
            peer: None,
            service: None,
            params: BTreeMap::new(),
        },
        rule: "test".into(),
        reason: "a test".into(),
        policy_name: "test".into(),
        policy_hash: Policy::parse(ROOMY_POLICY).unwrap().hash().to_owned(),
        knowledge: Vec::new(),
        prev_hash: String::new(),
        signature: Vec::new(),
    }
}

/// Publishes `events` and waits until they are stored.
pub async fn publish<E: AvroEvent>(js: &JetStream, events: &[E]) {
    let mut publisher = Publisher::new(js.clone());
    for e in events {
        publisher.publish(e).await.unwrap();
    }
    assert!(publisher.finish().await.all_acked());
}

/// Every `E` stored so far.
pub async fn stored<E: AvroEvent>(js: &JetStream) -> Vec<E> {
    let config = SubscriberConfig::all();
    let mut sub = Subscriber::<E>::open(js, config).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..sub.pending_at_start() {
        out.push(sub.next().await.unwrap().unwrap().event.unwrap());
    }
    out
}

/// Waits until `E`'s stream holds at least `n` events, and returns them.
pub async fn wait_for<E: AvroEvent>(js: &JetStream, n: usize) -> Vec<E> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = stored::<E>(js).await;
        if events.len() >= n {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} events stored after 20 s",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the durable consumer `durable` of `stream` acknowledged everything stored.
pub async fn wait_caught_up(js: &JetStream, stream: &str, durable: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = js.get_stream(stream).await.unwrap();
        let stored = s.info().await.unwrap().state.last_sequence;
        let floor = match s.consumer_info(durable).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(_) => 0,
        };
        if floor >= stored {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{durable} stuck at {floor} of {stored}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker running in a task, and the switch that stops it.
pub struct Running<T> {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<T>,
}

/// A shutdown future and the switch that completes it.
pub fn switch() -> (
    tokio::sync::oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

impl<T: Send + 'static> Running<T> {
    /// Runs `worker`, built from a shutdown future.
    pub fn start<F>(
        worker: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
    ) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (stop, shutdown) = switch();
        let task = tokio::spawn(worker(Box::pin(shutdown)));
        Self { stop, task }
    }

    /// Kills it, as kill -9 would: none of its code runs again, nothing it took is
    /// acknowledged, and what it was waiting for is left as it was.
    pub async fn kill(self) {
        self.task.abort();
        assert!(self.task.await.is_err_and(|e| e.is_cancelled()));
    }

    /// Stops it and returns what it returned.
    pub async fn stop(self) -> T {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Waits until the executors `names` hold the 8 execute partitions between them, each some.
pub async fn wait_until_partitions_shared(js: &JetStream, names: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let owners = partition_owners(js).await;
        let by: BTreeSet<&str> = owners.values().map(String::as_str).collect();
        if owners.len() == 8 && by == names.iter().copied().collect() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions not shared by {names:?} after 20 s: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Who holds each execute partition lease.
pub async fn partition_owners(js: &JetStream) -> BTreeMap<String, String> {
    let mut owners = mapek_bus::progress::lease_owners(js).await;
    owners.retain(|lease, _| lease.starts_with("execute.p"));
    owners
}
