//! A real JetStream cluster of `nats-server`s on loopback, for tests that lose a server.
//!
//! Each server has a free client port and a free route port on 127.0.0.1, a store of its own
//! under one temporary directory, and the telemetry mapping, written to a config file like
//! `deploy/nats/cluster/local-*.conf`, and keeps its log beside it ([`NatsCluster::log`]).
//! A test kills a server as a crash would (SIGKILL), and starts it again on the same ports
//! with the same store. Everything is removed on drop.

use std::path::PathBuf;
use std::process::Child;

use tempfile::TempDir;

use crate::nats::{SYNC, free_port, kill, log_path, panic_message, spawn, wait_for_port};

/// One server of a [`NatsCluster`].
struct Node {
    name: String,
    port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A running JetStream cluster, stopped and removed with its stores when dropped.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts `size` servers named `n1`, `n2`, … in one cluster, each with JetStream and the
    /// telemetry mapping. They are ready for clients when this returns; JetStream may still be
    /// electing its meta leader for a second or two.
    ///
    /// # Panics
    /// When no usable `nats-server` is found, or a server does not start within 10 s three
    /// times over (each time on newly picked ports).
    pub fn start(size: usize) -> Self {
        Self::start_with_sync(size, true)
    }

    /// [`NatsCluster::start`], with `sync_interval: always` as mapek ships it (`sync`) or the
    /// server's default (a flush every two minutes), to measure what syncing costs.
    ///
    /// # Panics
    /// As [`NatsCluster::start`].
    pub fn start_with_sync(size: usize, sync: bool) -> Self {
        // A port picked as free may be taken by another test's server before this one binds
        // it: then the whole cluster starts again on other ports.
        let mut attempt = 1;
        loop {
            match Self::try_start(size, sync) {
                Ok(cluster) => return cluster,
                Err(e) if attempt < 3 => eprintln!("a cluster server did not start ({e}); again"),
                Err(e) => panic!("the cluster did not start: {e}"),
            }
            attempt += 1;
        }
    }

    /// Starts the cluster on ports picked now; an error when a server does not start.
    fn try_start(size: usize, sync: bool) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("mapek-nats-cluster-")
            .tempdir()
            .expect("a temporary directory for the cluster's stores");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, route))| {
                let name = format!("n{}", i + 1);
                let config = dir.path().join(format!("{name}.conf"));
                let text = format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{\n  store_dir: {:?}\n  {}\n}}\n\
                     cluster {{\n  name: mapek\n  listen: 127.0.0.1:{route}\n  \
                     routes: [\n    {}\n  ]\n}}\n{}\n",
                    dir.path().join(&name),
                    if sync { SYNC } else { "" },
                    routes.join("\n    "),
                    mapek_domain::TELEMETRY_MAPPING
                );
                std::fs::write(&config, text).expect("write a nats-server config");
                Node {
                    name,
                    port,
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self { nodes, _dir: dir };
        // Started together: each waits for the others' routes before it says it is ready.
        let children: Vec<_> = (0..size)
            .map(|i| {
                let config = cluster.nodes[i].config.clone();
                std::thread::spawn(move || spawn(&config, &[]))
            })
            .collect();
        let mut failed = None;
        for (node, child) in cluster.nodes.iter_mut().zip(children) {
            match child.join() {
                Ok(child) => node.child = Some(child),
                Err(panic) => failed = Some(panic_message(panic.as_ref())),
            }
        }
        if let Some(why) = failed {
            return Err(why); // dropping the cluster stops the servers that did start
        }
        cluster.nodes.iter().for_each(|n| wait_for_port(n.port));
        Ok(cluster)
    }

    /// The process ids of the servers running, to read their CPU time.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// Every server's client URL, comma-separated, as `--nats-url` takes them.
    pub fn url(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of server `i` (from 0).
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The name of server `i` (`n1` for 0), as stream infos give a leader.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the server named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// What server `i` has logged since the cluster started, across its restarts.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(log_path(&self.nodes[i].config)).unwrap_or_default()
    }

    /// How many servers the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no servers (never, once started).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Kills server `i` with SIGKILL, as a crash would, keeping its store.
    pub fn kill(&mut self, i: usize) {
        kill(&mut self.nodes[i].child);
    }

    /// Starts server `i` again, on its ports with its store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let node = &mut self.nodes[i];
        node.child = Some(spawn(&node.config, &[]));
        wait_for_port(node.port);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            kill(&mut node.child);
        }
    }
}
