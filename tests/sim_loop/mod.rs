//! What the whole-loop tests share: a fresh nats-server with mapek's streams, a simulated
//! 32-node mesh with faults, run 20 times faster than the clock, every phase's workers
//! around it, and a way to wait for what the loop did about a node.

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use mapek_bus::{JetStream, Subscriber, SubscriberConfig};
use mapek_domain::{AnalyzeConfig, Analyzer, ExecuteConfig, NodeId};
use mapek_loop::lease::run_partitioned;
use mapek_loop::plan::PlanStage;
use mapek_sim::{Fault, FaultScript, Mesh, MeshConfig};
use mapek_testkit::NatsServer;
use tokio::sync::watch;

/// Event time of the simulation's start: 2026-11-28T12:00:00Z.
pub const T0: i64 = 1_795_867_200_000;

/// A node id.
pub fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// A signal every worker of the loop stops on.
pub type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The loop around a simulated mesh, running until dropped.
pub struct SimLoop {
    /// The server (kept alive with the loop).
    pub server: NatsServer,
    /// A JetStream context on it.
    pub js: JetStream,
    /// A plain client on it.
    pub client: async_nats::Client,
    stop: watch::Sender<bool>,
}

impl SimLoop {
    /// Starts a 32-node mesh (seed 3, so every partition has nodes whose telemetry moves its
    /// watermark) with `faults`, a sample a second per node in event time at 20 times the
    /// clock, and the analyze (silent after 10 s), plan (`plan` makes each partition's
    /// stage), execute and evaluate (30 s windows) workers.
    pub async fn start(
        faults: Vec<Fault>,
        plan: impl Fn(u32) -> PlanStage + Send + Sync + 'static,
    ) -> Self {
        let (server, js) = mapek_testkit::server_with_streams().await;
        let client = mapek_bus::connect_client(&server.url()).await.unwrap();
        let mesh = Mesh::new(
            MeshConfig {
                nodes: 32,
                ..MeshConfig::default()
            },
            3,
        )
        .unwrap()
        .with_faults(&FaultScript { fault: faults })
        .unwrap();
        let (stop, _) = watch::channel(false);
        let sim = Self {
            server,
            js,
            client,
            stop,
        };
        let (js, client) = (sim.js.clone(), sim.client.clone());
        sim.spawn(|stopped| mapek_sim::run_faster(js, client, mesh, 20.0, 1000, T0, stopped));
        let analyze = AnalyzeConfig {
            silent_after_ms: 10_000,
            ..AnalyzeConfig::default()
        };
        let js = sim.js.clone();
        sim.spawn(|stopped| {
            let stage = move |_| Analyzer::new(analyze.clone());
            run_partitioned(js, "analyze", 8, "t".into(), TTL, stage, stopped)
        });
        let js = sim.js.clone();
        sim.spawn(|stopped| run_partitioned(js, "plan", 8, "t".into(), TTL, plan, stopped));
        let execute = ExecuteConfig {
            evaluate_window_ms: 30_000,
            command_timeout_ms: 500,
            ..ExecuteConfig::default()
        };
        let (js, client, config) = (sim.js.clone(), sim.client.clone(), execute.clone());
        sim.spawn(|stopped| mapek_loop::execute::run(js, client, config, stopped));
        let js = sim.js.clone();
        sim.spawn(|stopped| mapek_loop::evaluate::run(js, execute, stopped));
        sim
    }

    /// Runs `work` beside the loop; it is handed the signal to stop on.
    pub fn spawn<F>(&self, work: impl FnOnce(Stopped) -> F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut rx = self.stop.subscribe();
        let stopped: Stopped = Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        tokio::spawn(work(stopped));
    }
}

impl Drop for SimLoop {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// How long partition leases outlive a stopped worker.
const TTL: Duration = Duration::from_secs(3);

/// The first stored `E` about `node` that passes `want`, within `within`.
pub async fn first_where<E: mapek_codec::AvroEvent>(
    js: &JetStream,
    node: &str,
    within: Duration,
    want: impl Fn(&E) -> bool,
) -> E {
    let config = SubscriberConfig::node(id(node));
    let mut sub = Subscriber::<E>::open(js, config).await.unwrap();
    tokio::time::timeout(within, async {
        loop {
            let e = sub.next().await.unwrap().unwrap().event.unwrap();
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {} for {node} within {within:?}", E::SCHEMA))
}
