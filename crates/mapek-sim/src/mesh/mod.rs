//! The mesh model: pure and deterministic, no clock and no I/O.
//!
//! [`Mesh::tick`] turns an event time into one [`Telemetry`] per live node; [`Mesh::apply`]
//! obeys a command. Everything random is drawn from the seed: the topology once, at
//! [`Mesh::new`], and each sample's noise from a hash of (seed, time, node, link), so noise
//! never depends on how many samples or commands came before. The same seed, ticks and
//! commands give the same telemetry, byte for byte.

use std::collections::{BTreeMap, BTreeSet};

use mapek_domain::{Action, ActionKind, LinkSample, NodeId, Telemetry};

use crate::fault::{Fault, FaultScript};
use crate::rng::{SplitMix64, noise};
use crate::{MeshConfig, SimError};

#[cfg(test)]
mod tests;

/// The most neighbours a chord may give a node; the ring gives each node 2.
const MAX_DEGREE: usize = 4;
/// What `rate_limit` multiplies a node's cpu by.
const RATE_LIMIT_CPU: f64 = 0.6;

/// A simulated mesh: nodes, links, faults, and what commands changed.
#[derive(Clone, Debug)]
pub struct Mesh {
    config: MeshConfig,
    seed: u64,
    nodes: Vec<Node>,
    /// Each node's neighbours, ascending.
    neighbours: Vec<Vec<usize>>,
    /// Healthy link values, by (lower index, higher index).
    links: BTreeMap<(usize, usize), BaseLink>,
    faults: Vec<Scripted>,
    /// Event time of the first tick: fault times count from it.
    first_ms: Option<i64>,
    /// How many ticks ran.
    ticks: u64,
}

#[derive(Clone, Debug)]
struct Node {
    id: NodeId,
    site: Option<String>,
    cpu: f64,
    mem: f64,
    /// Peers this node routes around (`reroute`).
    avoided: BTreeSet<usize>,
    quarantined: bool,
    rate_limited: bool,
}

#[derive(Clone, Copy, Debug)]
struct BaseLink {
    latency_ms: f64,
    loss: f64,
}

/// A fault of the script, resolved to node indices, with its life so far.
#[derive(Clone, Debug)]
struct Scripted {
    fault: Fault,
    hit: Hit,
    /// Active at the last tick.
    active: bool,
    /// Cleared by `restart_service` while active; stays off.
    cleared: bool,
    /// The tick at which it became active (flapping counts from it).
    since_tick: u64,
}

#[derive(Clone, Debug)]
enum Hit {
    Degrade(usize, usize, f64, f64),
    Crash(usize),
    Hog(usize),
    Flap(usize, usize, u32),
    Partition(BTreeSet<usize>),
}

/// A link's state at one tick, before noise.
struct LinkState {
    up: bool,
    latency_ms: f64,
    loss: f64,
}

impl Mesh {
    /// Builds a mesh of `config.nodes` nodes from `seed`: a ring, so it is always connected,
    /// plus random chords that give each node 2 to 4 neighbours; each link draws a base
    /// latency and loss.
    pub fn new(config: MeshConfig, seed: u64) -> Result<Self, SimError> {
        config.check().map_err(SimError::Config)?;
        let n = config.nodes;
        let mut rng = SplitMix64::new(seed);
        let mut adjacent: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        for i in 0..n {
            let j = (i + 1) % n;
            adjacent[i].insert(j);
            adjacent[j].insert(i);
        }
        for i in 0..n {
            let want = 2 + rng.below(MAX_DEGREE - 1);
            let mut tries = 0;
            while adjacent[i].len() < want && tries < 16 {
                tries += 1;
                let j = rng.below(n);
                if j != i && !adjacent[i].contains(&j) && adjacent[j].len() < MAX_DEGREE {
                    adjacent[i].insert(j);
                    adjacent[j].insert(i);
                }
            }
        }
        let mut links = BTreeMap::new();
        for (i, adj) in adjacent.iter().enumerate() {
            for &j in adj.iter().filter(|&&j| j > i) {
                let base = BaseLink {
                    latency_ms: rng.range(config.min_latency_ms, config.max_latency_ms),
                    loss: rng.range(0.0, config.max_base_loss),
                };
                links.insert((i, j), base);
            }
        }
        let nodes = (0..n)
            .map(|i| Node {
                id: NodeId::new(format!("n{i}")).expect("a valid id"),
                site: (config.sites > 0).then(|| format!("site-{}", i % config.sites)),
                cpu: rng.range(0.15, 0.35),
                mem: rng.range(0.3, 0.5),
                avoided: BTreeSet::new(),
                quarantined: false,
                rate_limited: false,
            })
            .collect();
        Ok(Self {
            config,
            seed,
            nodes,
            neighbours: adjacent
                .into_iter()
                .map(|a| a.into_iter().collect())
                .collect(),
            links,
            faults: Vec::new(),
            first_ms: None,
            ticks: 0,
        })
    }

    /// Adds the faults of `script`, checking that every node it names exists and that every
    /// link it names joins two neighbours.
    pub fn with_faults(mut self, script: &FaultScript) -> Result<Self, SimError> {
        for (k, fault) in script.fault.iter().enumerate() {
            let hit = self.resolve(fault).map_err(|detail| {
                SimError::Config(format!("fault {} ({}): {detail}", k + 1, fault.kind()))
            })?;
            self.faults.push(Scripted {
                fault: fault.clone(),
                hit,
                active: false,
                cleared: false,
                since_tick: 0,
            });
        }
        Ok(self)
    }

    /// The node ids, `n0 .. n{N-1}`.
    pub fn node_ids(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.iter().map(|n| &n.id)
    }

    /// The neighbours of `node`, in index order; empty for an unknown node.
    pub fn neighbours(&self, node: &NodeId) -> Vec<NodeId> {
        self.index(node)
            .map(|i| {
                self.neighbours[i]
                    .iter()
                    .map(|&j| self.nodes[j].id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The seed the mesh was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// One telemetry sample per live node at event time `t_ms` (milliseconds since the Unix
    /// epoch). Fault times count from the first tick's `t_ms`.
    pub fn tick(&mut self, t_ms: i64) -> Vec<Telemetry> {
        let elapsed = t_ms - *self.first_ms.get_or_insert(t_ms);
        let tick = self.ticks;
        self.ticks += 1;
        for f in &mut self.faults {
            let active = !f.cleared && f.fault.active_at(elapsed);
            if active && !f.active {
                f.since_tick = tick;
            }
            f.active = active;
        }
        let crashed = self.crashed();
        (0..self.nodes.len())
            .filter(|i| !crashed.contains(i))
            .map(|i| self.sample(i, t_ms, tick, &crashed))
            .collect()
    }

    /// Obeys `action` on `node`, as the node's agent would, and says what it did; `Err` says
    /// why it could not. The effect shows from the next tick on.
    pub fn apply(&mut self, action: &Action, node: &NodeId) -> Result<String, String> {
        let i = self.index(node).ok_or_else(|| {
            format!(
                "no node {node} in this mesh (n0 to n{})",
                self.nodes.len() - 1
            )
        })?;
        let down = self.crashed().contains(&i);
        if down && action.kind != ActionKind::RestartService {
            return Err(format!(
                "{node} is down and cannot {}; restart it first",
                action.kind.as_str()
            ));
        }
        match action.kind {
            ActionKind::Reroute => self.reroute(i, action.peer.as_ref()),
            ActionKind::RestartService => Ok(self.restart(i, action.service.as_deref())),
            ActionKind::Quarantine => {
                self.nodes[i].quarantined = true;
                Ok(format!("{node} is quarantined: no route uses it any more"))
            }
            ActionKind::RateLimit => {
                self.nodes[i].rate_limited = true;
                Ok(format!("{node} is rate-limited: its load drops"))
            }
            ActionKind::Escalate => Ok(format!("nothing done on {node}: escalated to a human")),
        }
    }

    fn reroute(&mut self, i: usize, peer: Option<&NodeId>) -> Result<String, String> {
        let node = self.nodes[i].id.clone();
        let peer = peer.ok_or_else(|| format!("reroute on {node} names no peer"))?;
        let p = self
            .index(peer)
            .filter(|p| self.neighbours[i].contains(p))
            .ok_or_else(|| format!("{node} has no link to {peer}"))?;
        if self.nodes[i].avoided.contains(&p) {
            return Ok(format!("{node} already routes around {peer}"));
        }
        if self.routes(i).len() <= 1 {
            return Err(format!(
                "{node} cannot route around {peer}: it would have no route left"
            ));
        }
        self.nodes[i].avoided.insert(p);
        Ok(format!("{node} routes around {peer}"))
    }

    fn restart(&mut self, i: usize, service: Option<&str>) -> String {
        let node = &self.nodes[i].id;
        let service = service.unwrap_or("the node's service");
        let mut cleared = Vec::new();
        for f in self.faults.iter_mut().filter(|f| f.active) {
            if let Hit::Crash(n) | Hit::Hog(n) = f.hit
                && n == i
            {
                f.cleared = true;
                f.active = false;
                cleared.push(f.fault.kind());
            }
        }
        if cleared.is_empty() {
            format!("restarted {service} on {node}; nothing was wrong with it")
        } else {
            format!(
                "restarted {service} on {node}: cleared {}",
                cleared.join(", ")
            )
        }
    }

    fn index(&self, node: &NodeId) -> Option<usize> {
        let i: usize = node.as_str().strip_prefix('n')?.parse().ok()?;
        (i < self.nodes.len() && self.nodes[i].id == *node).then_some(i)
    }

    fn resolve(&self, fault: &Fault) -> Result<Hit, String> {
        let node = |id: &NodeId| {
            self.index(id)
                .ok_or_else(|| format!("no node {id} (n0 to n{})", self.nodes.len() - 1))
        };
        let link = |a: &NodeId, b: &NodeId| -> Result<(usize, usize), String> {
            let (i, j) = (node(a)?, node(b)?);
            if self.neighbours[i].contains(&j) {
                Ok((i.min(j), i.max(j)))
            } else {
                Err(format!(
                    "{a} and {b} are not neighbours; {a}'s are {}",
                    self.neighbours(a)
                        .iter()
                        .map(NodeId::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        };
        Ok(match fault {
            Fault::LinkDegradation {
                a,
                b,
                added_latency_ms,
                added_loss,
                ..
            } => {
                let (i, j) = link(a, b)?;
                Hit::Degrade(i, j, *added_latency_ms, *added_loss)
            }
            Fault::NodeCrash { node: n, .. } => Hit::Crash(node(n)?),
            Fault::CpuHog { node: n, .. } => Hit::Hog(node(n)?),
            Fault::FlappingLink {
                a, b, every_ticks, ..
            } => {
                let (i, j) = link(a, b)?;
                Hit::Flap(i, j, *every_ticks)
            }
            Fault::Partition { nodes, .. } => {
                Hit::Partition(nodes.iter().map(node).collect::<Result<_, _>>()?)
            }
        })
    }

    fn active(&self) -> impl Iterator<Item = &Scripted> {
        self.faults.iter().filter(|f| f.active)
    }

    fn crashed(&self) -> BTreeSet<usize> {
        self.active()
            .filter_map(|f| match f.hit {
                Hit::Crash(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    /// The neighbours node `i` routes over: not avoided, and neither end quarantined.
    fn routes(&self, i: usize) -> Vec<usize> {
        if self.nodes[i].quarantined {
            return Vec::new();
        }
        self.neighbours[i]
            .iter()
            .copied()
            .filter(|j| !self.nodes[i].avoided.contains(j) && !self.nodes[*j].quarantined)
            .collect()
    }

    /// The link between `i` and `j` at `tick`, faults included, before noise.
    fn link_state(&self, i: usize, j: usize, tick: u64, crashed: &BTreeSet<usize>) -> LinkState {
        let key = (i.min(j), i.max(j));
        let base = self.links[&key];
        let mut up = !crashed.contains(&i) && !crashed.contains(&j);
        let (mut latency_ms, mut loss) = (base.latency_ms, base.loss);
        for f in self.active() {
            match &f.hit {
                Hit::Degrade(a, b, lat, l) if (*a, *b) == key => {
                    latency_ms += lat;
                    loss += l;
                }
                Hit::Flap(a, b, every) if (*a, *b) == key => {
                    let phase = (tick - f.since_tick) / u64::from(*every);
                    up &= phase % 2 == 1;
                }
                Hit::Partition(set) if set.contains(&i) != set.contains(&j) => up = false,
                _ => {}
            }
        }
        if up {
            LinkState {
                up,
                latency_ms,
                loss: loss.min(1.0),
            }
        } else {
            LinkState {
                up,
                latency_ms: 0.0,
                loss: 1.0,
            }
        }
    }

    /// Node `i`'s telemetry at `t_ms`.
    fn sample(&self, i: usize, t_ms: i64, tick: u64, crashed: &BTreeSet<usize>) -> Telemetry {
        let node = &self.nodes[i];
        let amp = self.config.noise;
        let wobble = |parts: &[u64]| {
            let mut all = vec![t_ms as u64, i as u64];
            all.extend_from_slice(parts);
            1.0 + amp * noise(self.seed, &all)
        };
        let links: Vec<LinkSample> = self.neighbours[i]
            .iter()
            .map(|&j| {
                // A link the node routes around is out of service on its side: it reports
                // it down, as a router reports an interface taken out of the routing table.
                let mut s = self.link_state(i, j, tick, crashed);
                if self.nodes[i].avoided.contains(&j) {
                    s.up = false;
                }
                let (latency_ms, loss) = if s.up {
                    (
                        s.latency_ms * wobble(&[j as u64, 0]),
                        (s.loss * wobble(&[j as u64, 1])).clamp(0.0, 1.0),
                    )
                } else {
                    (0.0, 1.0)
                };
                LinkSample {
                    peer: self.nodes[j].id.clone(),
                    up: s.up,
                    latency_ms,
                    loss,
                }
            })
            .collect();
        let routes = self.routes(i);
        let used: Vec<&LinkSample> = links
            .iter()
            .filter(|l| routes.iter().any(|&j| self.nodes[j].id == l.peer))
            .collect();
        let up: Vec<f64> = used.iter().filter(|l| l.up).map(|l| l.latency_ms).collect();
        let latency_ms = mean(&up);
        let loss = mean(&used.iter().map(|l| l.loss).collect::<Vec<_>>());
        let hog = self
            .active()
            .any(|f| matches!(f.hit, Hit::Hog(n) if n == i));
        let mut cpu = if hog {
            0.96 + 0.03 * noise(self.seed, &[t_ms as u64, i as u64, u64::MAX])
        } else {
            node.cpu * wobble(&[u64::MAX])
        };
        if node.rate_limited {
            cpu *= RATE_LIMIT_CPU;
        }
        let mem = node.mem * wobble(&[u64::MAX - 1]);
        let metrics = BTreeMap::from([
            ("latency_ms".to_owned(), latency_ms),
            ("loss".to_owned(), loss),
            ("cpu".to_owned(), cpu.clamp(0.0, 1.0)),
            ("mem".to_owned(), mem.clamp(0.0, 1.0)),
            ("routes".to_owned(), routes.len() as f64),
        ]);
        let mut t = Telemetry::new(node.id.clone(), t_ms, metrics);
        t.links = links;
        t.site = node.site.clone();
        t.event_id = t.content_id();
        t
    }
}

/// The mean, or 0 for none.
fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}
