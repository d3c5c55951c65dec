//! What the analyzer keeps per node, and the table of node names.
//!
//! Node names are interned once: windows, links and indexes refer to nodes by a `u32`, so a
//! node's state holds no strings and no maps, only fixed-size rings and a short sorted list of
//! links.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;

use super::AnalyzeConfig;
use super::hysteresis::Tracker;
use super::window::{Baseline, Link, Ring};
use crate::{NodeId, SymptomKind, Telemetry};

/// Every node name seen, as a node or as a peer, by index.
#[derive(Clone, Debug, Default)]
pub(crate) struct Names {
    ids: Vec<NodeId>,
    /// Lookup only; never iterated, so its order never reaches the output.
    index: HashMap<NodeId, u32, BuildHasherDefault<NameHasher>>,
}

/// FNV-1a over the name's bytes: every sample looks its node and its peers up here, and
/// names are short, where the default SipHash costs several times more. The table is private
/// to one analyzer and fed by its own log, so hash flooding is no concern; and since the
/// table is never iterated, the hash cannot reach the output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Names {
    /// The index of `id`, adding it if new.
    pub(crate) fn intern(&mut self, id: &NodeId) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(id.clone());
        self.index.insert(id.clone(), i);
        i
    }

    /// The name at index `i`.
    pub(crate) fn get(&self, i: u32) -> &NodeId {
        &self.ids[i as usize]
    }

    /// How many names.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Orders two indexes by name.
    pub(crate) fn cmp(&self, a: u32, b: u32) -> Ordering {
        self.get(a).cmp(self.get(b))
    }

    /// Heap and inline bytes: each name is stored twice (list and lookup), plus the map's
    /// slots and control bytes.
    pub(crate) fn approx_bytes(&self) -> usize {
        let text: usize = self.ids.iter().map(|id| id.as_str().len()).sum();
        let slot = size_of::<NodeId>() + size_of::<u32>() + 1;
        self.ids.capacity() * size_of::<NodeId>() + 2 * text + self.index.capacity() * slot
    }
}

/// One node's windows, baseline, links and hysteresis.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeState {
    /// Metric `latency_ms`.
    pub(crate) latency: Ring,
    /// Metric `loss`.
    pub(crate) loss: Ring,
    /// Metric `cpu`.
    pub(crate) cpu: Ring,
    /// Metric `mem`.
    pub(crate) mem: Ring,
    /// The node's normal latency.
    pub(crate) baseline: Baseline,
    /// One per [`SymptomKind`], in [`SymptomKind::ALL`] order.
    pub(crate) trackers: [Tracker; 6],
    /// Links reported in the last `window` samples, sorted by peer name.
    pub(crate) links: Vec<Link>,
    /// The highest event time this node reported; `None` for a name seen only as a peer.
    pub(crate) last_seen: Option<i64>,
    /// How many samples the node reported (wrapping), to age links out.
    pub(crate) seq: u32,
}

/// Where a kind's tracker sits in [`NodeState::trackers`].
pub(crate) fn slot(kind: SymptomKind) -> usize {
    match kind {
        SymptomKind::HighLatency => 0,
        SymptomKind::PacketLoss => 1,
        SymptomKind::NodeSilent => 2,
        SymptomKind::CpuSaturation => 3,
        SymptomKind::MemorySaturation => 4,
        SymptomKind::LinkFlapping => 5,
    }
}

impl NodeState {
    /// The hysteresis of one kind.
    pub(crate) fn tracker(&self, kind: SymptomKind) -> Tracker {
        self.trackers[slot(kind)]
    }

    /// Folds one sample's metrics and links into the windows. Non-finite values (which
    /// validation refuses upstream) are skipped rather than poisoning a window.
    pub(crate) fn fold(
        &mut self,
        t: &Telemetry,
        readings: &Readings,
        config: &AnalyzeConfig,
        names: &mut Names,
    ) {
        self.seq = self.seq.wrapping_add(1);
        self.last_seen = Some(self.last_seen.map_or(t.ts_ms, |seen| seen.max(t.ts_ms)));
        let window = config.window;
        for (reading, ring) in [
            (readings.latency_ms, &mut self.latency),
            (readings.loss, &mut self.loss),
            (readings.cpu, &mut self.cpu),
            (readings.mem, &mut self.mem),
        ] {
            if let Some(x) = reading {
                ring.push(window, x);
            }
        }
        for sample in &t.links {
            let peer = names.intern(&sample.peer);
            // A node has a few links and reports the same peers sample after sample: look the
            // peer up by index first, and compare names only to place a new one.
            let found = match self.links.iter().position(|l| l.peer == peer) {
                Some(i) => Ok(i),
                None => self.links.binary_search_by(|l| names.cmp(l.peer, peer)),
            };
            match found {
                // Reported twice in one sample: the first report counts.
                Ok(i) if self.links[i].seen == self.seq => {}
                Ok(i) => self.links[i].observe(sample, config.link_alpha, self.seq),
                Err(i) => {
                    let mut link = Link::new(peer, self.seq);
                    link.observe(sample, config.link_alpha, self.seq);
                    self.links.insert(i, link);
                }
            }
        }
        let seq = self.seq;
        self.links
            .retain(|l| (seq.wrapping_sub(l.seen) as usize) < window);
    }

    /// Approximate bytes this node costs: the struct, its rings and its links.
    pub(crate) fn approx_bytes(&self) -> usize {
        size_of::<Self>()
            + [&self.latency, &self.loss, &self.cpu, &self.mem]
                .iter()
                .map(|r| r.heap_bytes())
                .sum::<usize>()
            + self.links.capacity() * size_of::<Link>()
    }
}

/// The metrics the detectors read, taken from a sample once per step: present and finite,
/// or `None`. One pass over the sample's map instead of a search per detector.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Readings {
    /// `latency_ms`.
    pub(crate) latency_ms: Option<f64>,
    /// `loss`.
    pub(crate) loss: Option<f64>,
    /// `cpu`.
    pub(crate) cpu: Option<f64>,
    /// `mem`.
    pub(crate) mem: Option<f64>,
}

impl Readings {
    /// The readings of `t`.
    pub(crate) fn of(t: &Telemetry) -> Self {
        let mut r = Self::default();
        for (name, &x) in &t.metrics {
            let slot = match name.as_str() {
                "latency_ms" => &mut r.latency_ms,
                "loss" => &mut r.loss,
                "cpu" => &mut r.cpu,
                "mem" => &mut r.mem,
                _ => continue,
            };
            *slot = Some(x).filter(|x| x.is_finite());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_step_reads_the_four_metrics_it_judges_and_skips_what_is_not_finite() {
        let metrics = BTreeMap::from([
            ("cpu".to_owned(), 0.5),
            ("disk".to_owned(), 0.9),
            ("latency_ms".to_owned(), f64::NAN),
            ("loss".to_owned(), 0.01),
        ]);
        let t = Telemetry::new(NodeId::new("n1").unwrap(), 1_000, metrics);
        let r = Readings::of(&t);
        assert_eq!(r.cpu, Some(0.5));
        assert_eq!(r.loss, Some(0.01));
        assert_eq!(r.latency_ms, None, "not finite");
        assert_eq!(r.mem, None, "absent");
    }

    #[test]
    fn names_are_found_again_whatever_order_they_came_in() {
        let mut names = Names::default();
        let ids: Vec<NodeId> = (0..1000)
            .map(|i| NodeId::new(format!("n{i}")).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(names.intern(id), i as u32);
        }
        for (i, id) in ids.iter().enumerate().rev() {
            assert_eq!(names.intern(id), i as u32, "{id:?}");
        }
        assert_eq!(names.len(), 1000);
    }
}
