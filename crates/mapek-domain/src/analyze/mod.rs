//! The analyze phase: per-node windows over telemetry, detectors and hysteresis, folded into
//! symptoms.
//!
//! [`Analyzer::step`] takes one [`Telemetry`] and returns the [`Symptom`]s it causes. It is a
//! pure fold: no clock (silence is judged against the highest event time seen, the
//! *watermark*), no randomness, no iteration over unordered maps, so the same telemetry in the
//! same order always gives the same symptoms, ids included. That is what lets a replay check
//! a recorded incident. `docs/analyze.md` describes the detectors and their settings.
//!
//! Each step first folds the sample into the node's windows, then asks every detector for a
//! reading, then lets each kind's `hysteresis` decide whether the reading opens, updates or
//! resolves an incident.
//!
//! # Layout
//! - [`config`]: [`AnalyzeConfig`], window length, hysteresis and thresholds.
//! - `window`: fixed-capacity rings, the latency baseline, link histories.
//! - `state`: what is kept per node, and the table of node names.
//! - `detect`: the detectors, pure readings of a node's windows.
//! - `hysteresis`: when readings open, update or resolve an incident.
//! - `render`: symptom ids, evidence and summaries ([`incident_id`], [`symptom_id`]).

pub mod config;
mod detect;
mod hysteresis;
mod render;
mod state;
mod window;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::mem::size_of;

pub use config::{AnalyzeConfig, MAX_WINDOW};
pub use render::{incident_id, symptom_id};

use detect::Reading;
use hysteresis::Rules;
use render::Emit;
use state::{Names, NodeState, Readings, slot};

use crate::{Invalid, Symptom, SymptomKind, SymptomState, Telemetry};

/// The analyze phase's state: every node's windows and incidents, and the watermark.
///
/// Feed it telemetry in stream order with [`Analyzer::step`]. State is a fold of the telemetry
/// alone, so a worker that restarts rebuilds it by replaying the monitor stream.
#[derive(Clone, Debug)]
pub struct Analyzer {
    config: AnalyzeConfig,
    rules: Rules,
    names: Names,
    /// By name index; a name seen only as a peer has an empty state.
    nodes: Vec<NodeState>,
    /// How many nodes have reported.
    reporting: usize,
    /// The highest event time seen from any node.
    watermark: Option<i64>,
    /// Reporting nodes that are not silent, by `(last_seen, node)`: the front is the next to
    /// fall silent, so a step looks only at nodes that just crossed the threshold.
    quiet: BTreeSet<(i64, u32)>,
    /// Silent nodes, by `(watermark at which an update may be due, node)`.
    silent: BTreeSet<(i64, u32)>,
    /// Reused for percentiles, so a step does not allocate.
    scratch: Vec<f32>,
}

impl Analyzer {
    /// An analyzer with no state.
    ///
    /// # Panics
    /// If `config` fails [`AnalyzeConfig::validate`]; use [`Analyzer::try_new`] for config
    /// that has not been checked.
    pub fn new(config: AnalyzeConfig) -> Self {
        match Self::try_new(config) {
            Ok(a) => a,
            Err(e) => panic!("invalid analyze config: {e}"),
        }
    }

    /// An analyzer with no state, or why `config` is invalid.
    pub fn try_new(config: AnalyzeConfig) -> Result<Self, Invalid> {
        config.validate()?;
        Ok(Self {
            rules: Rules {
                open_after: config.open_after,
                resolve_after: config.resolve_after,
                update_ratio: config.update_ratio,
                update_every_ms: config.update_every_ms,
            },
            config,
            names: Names::default(),
            nodes: Vec::new(),
            reporting: 0,
            watermark: None,
            quiet: BTreeSet::new(),
            silent: BTreeSet::new(),
            scratch: Vec::new(),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &AnalyzeConfig {
        &self.config
    }

    /// How many nodes have reported telemetry.
    pub fn nodes(&self) -> usize {
        self.reporting
    }

    /// The highest event time seen from any node, in milliseconds since the Unix epoch.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Approximately how many bytes the state takes: per-node windows, links, hysteresis,
    /// names and indexes. Divide by [`Analyzer::nodes`] for the cost of a node.
    pub fn approx_state_bytes(&self) -> usize {
        let index = size_of::<(i64, u32)>() * 3 / 2;
        let spare = self.nodes.capacity() - self.nodes.len();
        size_of::<Self>()
            + self.names.approx_bytes()
            + self
                .nodes
                .iter()
                .map(NodeState::approx_bytes)
                .sum::<usize>()
            + spare * size_of::<NodeState>()
            + (self.quiet.len() + self.silent.len()) * index
            + self.scratch.capacity() * size_of::<f32>()
    }

    /// Folds one telemetry sample in and returns the symptoms it causes, in a fixed order:
    /// the reporting node's own, in [`SymptomKind`] order, then silences of other nodes that
    /// the sample's time revealed, by node id.
    ///
    /// Expects telemetry that passed [`crate::Event::validate`]; non-finite values are
    /// skipped.
    pub fn step(&mut self, t: &Telemetry) -> Vec<Symptom> {
        let me = self.names.intern(&t.node);
        self.nodes.resize_with(self.names.len(), NodeState::default);
        let before = self.watermark;
        let watermark = before.map_or(t.ts_ms, |w| w.max(t.ts_ms));
        self.watermark = Some(watermark);

        self.unindex(me);
        let previous = self.nodes[me as usize].last_seen;
        if previous.is_none() {
            self.reporting += 1;
        }
        let readings = Readings::of(t);
        self.nodes[me as usize].fold(t, &readings, &self.config, &mut self.names);
        self.nodes.resize_with(self.names.len(), NodeState::default);

        let mut out = self.judge_own(me, t, &readings, previous, watermark);
        // The reporting node is out of the indexes until it is judged, so it is never judged
        // twice in one step.
        if before.is_none_or(|b| watermark > b) {
            self.judge_others(t, watermark, &mut out);
        }
        self.index(me);
        out
    }

    /// The reporting node's own detectors, in [`SymptomKind`] order.
    fn judge_own(
        &mut self,
        me: u32,
        t: &Telemetry,
        readings: &Readings,
        previous: Option<i64>,
        watermark: i64,
    ) -> Vec<Symptom> {
        let mut out = Vec::new();
        for kind in SymptomKind::ALL {
            let c = &self.config;
            let node = &self.nodes[me as usize];
            let sticky = node.tracker(kind).peer();
            let reading = match kind {
                SymptomKind::HighLatency => {
                    detect::latency(node, t, readings, c, sticky, &mut self.scratch)
                }
                SymptomKind::PacketLoss => detect::loss(node, t, readings, c, sticky),
                SymptomKind::NodeSilent => {
                    let seen = node.last_seen.unwrap_or(t.ts_ms);
                    let gap = previous.map_or(0, |p| (t.ts_ms - p).max(0));
                    Some(detect::silence(seen, watermark, gap, c))
                }
                SymptomKind::CpuSaturation => {
                    detect::saturation(node, readings.cpu, "cpu", c.cpu_threshold)
                }
                SymptomKind::MemorySaturation => {
                    detect::saturation(node, readings.mem, "mem", c.mem_threshold)
                }
                SymptomKind::LinkFlapping => detect::flapping(node, t, c, sticky),
            };
            if kind == SymptomKind::HighLatency {
                self.fold_baseline(me, readings.latency_ms);
            }
            if let Some(reading) = reading
                && let Some(s) = self.judge(me, kind, &reading, t)
            {
                out.push(s);
            }
        }
        out
    }

    /// Folds the sample's latency into the node's baseline if it breached nothing, judged
    /// against the baseline as it stood before the sample.
    fn fold_baseline(&mut self, me: u32, latency_ms: Option<f64>) {
        let c = &self.config;
        let node = &mut self.nodes[me as usize];
        let Some(x) = latency_ms else {
            return;
        };
        let baseline = node
            .baseline
            .ready(c.baseline_min_samples, c.baseline_floor_ms);
        if x <= detect::effective_latency_limit(baseline, c) {
            node.baseline.fold(x, c.baseline_alpha);
        }
    }

    /// Silences that the watermark's advance to `watermark` revealed, or made worse, among
    /// the nodes other than the one reporting.
    fn judge_others(&mut self, t: &Telemetry, watermark: i64, out: &mut Vec<Symptom>) {
        let cutoff = watermark.saturating_sub(self.config.silent_after_ms as i64);
        // Take every node that is due before judging any, so that one re-indexed with a
        // due time already passed waits for the next step instead of looping.
        let mut due = Vec::new();
        while let Some(&(seen, i)) = self.quiet.first() {
            if seen > cutoff {
                break;
            }
            self.quiet.pop_first();
            due.push(i);
        }
        while let Some(&(at, i)) = self.silent.first() {
            if at > watermark {
                break;
            }
            self.silent.pop_first();
            due.push(i);
        }
        let mut found = Vec::new();
        for i in due {
            let seen = self.nodes[i as usize].last_seen.unwrap_or(watermark);
            let reading = detect::silence(seen, watermark, 0, &self.config);
            if let Some(s) = self.judge(i, SymptomKind::NodeSilent, &reading, t) {
                found.push(s);
            }
            self.index(i);
        }
        found.sort_by(|a, b| a.node.cmp(&b.node));
        out.extend(found);
    }

    /// Runs one reading of `kind` for node `who` through its hysteresis, stores the new
    /// hysteresis and makes the symptom it calls for.
    fn judge(
        &mut self,
        who: u32,
        kind: SymptomKind,
        reading: &Reading,
        cause: &Telemetry,
    ) -> Option<Symptom> {
        let rules = match kind {
            // Silence is a single condition judged against event time: it opens as soon as
            // the watermark passes the threshold and resolves on the node's next report.
            SymptomKind::NodeSilent => Rules {
                open_after: 1,
                resolve_after: 1,
                ..self.rules
            },
            _ => self.rules,
        };
        let before = self.nodes[who as usize].tracker(kind);
        let (after, state) = before.next(reading.verdict, rules, cause.ts_ms);
        self.nodes[who as usize].trackers[slot(kind)] = after;
        let state = state?;
        let (opened_at, peer) = match state {
            SymptomState::Resolve => (before.opened_at(), before.peer()),
            _ => (after.opened_at(), after.peer()),
        };
        let peer = (peer != hysteresis::NO_PEER).then(|| self.names.get(peer));
        let emit = Emit {
            node: self.names.get(who),
            kind,
            state,
            reading,
            peer,
            opened_at: opened_at.unwrap_or(cause.ts_ms),
            cause,
            config: &self.config,
        };
        Some(emit.symptom())
    }

    /// Where node `i` sits in the silence indexes, if it has reported.
    fn index_key(&self, i: u32) -> Option<(bool, (i64, u32))> {
        let node = &self.nodes[i as usize];
        let seen = node.last_seen?;
        let tracker = node.tracker(SymptomKind::NodeSilent);
        if tracker.opened_at().is_none() {
            return Some((false, (seen, i)));
        }
        // The first watermark at which the silence has grown by `update_ratio` since the last
        // symptom. A function of the node's state alone, so removing finds what was inserted.
        let c = &self.config;
        let grown = tracker.severity() * (1.0 + c.update_ratio) * c.silent_after_ms as f64;
        Some((true, (seen.saturating_add(grown.ceil() as i64), i)))
    }

    fn index(&mut self, i: u32) {
        match self.index_key(i) {
            Some((false, key)) => self.quiet.insert(key),
            Some((true, key)) => self.silent.insert(key),
            None => false,
        };
    }

    fn unindex(&mut self, i: u32) {
        match self.index_key(i) {
            Some((false, key)) => self.quiet.remove(&key),
            Some((true, key)) => self.silent.remove(&key),
            None => false,
        };
    }
}
