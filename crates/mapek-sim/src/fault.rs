//! Faults: what goes wrong in the simulated mesh, and when, read from a TOML file.
//!
//! ```toml
//! [[fault]]
//! kind = "link_degradation"   # which fault; the other fields depend on it
//! start_s = 5.0               # seconds after the first tick
//! duration_s = 60.0           # optional: how long it lasts; absent = to the end of the run
//! a = "n0"                    # one end of the link
//! b = "n1"                    # the other end; a and b must be neighbours
//! added_latency_ms = 80.0     # latency added to the link, both ways
//! added_loss = 0.3            # loss added to the link (0..1), both ways
//! ```
//!
//! Node ids are the generated `n0 .. n{N-1}`. The ring links `n{i}`–`n{i+1}` (and
//! `n{N-1}`–`n0`) exist whatever the seed, so a script that names only those works for every
//! seed; chords depend on the seed. See `docs/simulator.md` for every kind.

use std::path::Path;

use mapek_domain::NodeId;
use serde::{Deserialize, Serialize};

use crate::SimError;

/// How many ticks a flapping link stays in each state when the script does not say.
pub const DEFAULT_FLAP_TICKS: u32 = 3;

/// A fault file: a list of `[[fault]]` tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultScript {
    /// The faults, in any order; several may be active at once.
    #[serde(default)]
    pub fault: Vec<Fault>,
}

/// One fault: its kind, when it starts, how long it lasts, and what it hits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// A link gets slower and lossier, both ways. Rerouting around the peer takes the link out
    /// of the node's routes, so its metrics recover even while the link stays bad.
    LinkDegradation {
        /// Seconds after the first tick.
        start_s: f64,
        /// How long it lasts, in seconds; absent = to the end of the run.
        #[serde(default)]
        duration_s: Option<f64>,
        /// One end of the link.
        a: NodeId,
        /// The other end.
        b: NodeId,
        /// Milliseconds added to the link's latency.
        #[serde(default)]
        added_latency_ms: f64,
        /// Loss added to the link (0..1); the sum is capped at 1.
        #[serde(default)]
        added_loss: f64,
    },
    /// The node stops: it publishes nothing and its neighbours see their links to it down.
    /// It comes back when the duration ends, or earlier when it is sent `restart_service`
    /// (the agent's out-of-band management path, like a power cycle).
    NodeCrash {
        /// Seconds after the first tick.
        start_s: f64,
        /// How long it lasts, in seconds; absent = until restarted.
        #[serde(default)]
        duration_s: Option<f64>,
        /// The node that crashes.
        node: NodeId,
    },
    /// A hung service spins a core: the node's cpu sits near 1.0 until `restart_service` (or
    /// the duration ends). `rate_limit` lowers it but does not clear it.
    CpuHog {
        /// Seconds after the first tick.
        start_s: f64,
        /// How long it lasts, in seconds; absent = until restarted.
        #[serde(default)]
        duration_s: Option<f64>,
        /// The node whose service hangs.
        node: NodeId,
    },
    /// A link goes down and up: down for `every_ticks` ticks, up for as many, and so on.
    FlappingLink {
        /// Seconds after the first tick.
        start_s: f64,
        /// How long it lasts, in seconds; absent = to the end of the run.
        #[serde(default)]
        duration_s: Option<f64>,
        /// One end of the link.
        a: NodeId,
        /// The other end.
        b: NodeId,
        /// Ticks in each state (at least 1).
        #[serde(default = "default_flap_ticks")]
        every_ticks: u32,
    },
    /// Every link between a node of the set and a node outside it goes down.
    Partition {
        /// Seconds after the first tick.
        start_s: f64,
        /// How long it lasts, in seconds; absent = to the end of the run.
        #[serde(default)]
        duration_s: Option<f64>,
        /// The nodes cut off from the rest.
        nodes: Vec<NodeId>,
    },
}

fn default_flap_ticks() -> u32 {
    DEFAULT_FLAP_TICKS
}

impl Fault {
    /// Seconds after the first tick at which it starts.
    pub fn start_s(&self) -> f64 {
        match self {
            Fault::LinkDegradation { start_s, .. }
            | Fault::NodeCrash { start_s, .. }
            | Fault::CpuHog { start_s, .. }
            | Fault::FlappingLink { start_s, .. }
            | Fault::Partition { start_s, .. } => *start_s,
        }
    }

    /// How long it lasts, in seconds, if it ends by itself.
    pub fn duration_s(&self) -> Option<f64> {
        match self {
            Fault::LinkDegradation { duration_s, .. }
            | Fault::NodeCrash { duration_s, .. }
            | Fault::CpuHog { duration_s, .. }
            | Fault::FlappingLink { duration_s, .. }
            | Fault::Partition { duration_s, .. } => *duration_s,
        }
    }

    /// Its kind as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::LinkDegradation { .. } => "link_degradation",
            Fault::NodeCrash { .. } => "node_crash",
            Fault::CpuHog { .. } => "cpu_hog",
            Fault::FlappingLink { .. } => "flapping_link",
            Fault::Partition { .. } => "partition",
        }
    }

    /// Whether it is active `elapsed_ms` after the first tick (ignoring restarts).
    pub fn active_at(&self, elapsed_ms: i64) -> bool {
        let start = (self.start_s() * 1000.0).round() as i64;
        let end = self
            .duration_s()
            .map(|d| start + (d * 1000.0).round() as i64);
        elapsed_ms >= start && end.is_none_or(|end| elapsed_ms < end)
    }

    /// Checks the numbers a type cannot: times not negative, fractions in 0..1.
    pub(crate) fn check_numbers(&self) -> Result<(), String> {
        let start = self.start_s();
        if !(start.is_finite() && start >= 0.0) {
            return Err(format!("start_s is {start}, but must be 0 or more"));
        }
        if let Some(d) = self.duration_s()
            && !(d.is_finite() && d > 0.0)
        {
            return Err(format!("duration_s is {d}, but must be more than 0"));
        }
        match self {
            Fault::LinkDegradation {
                added_latency_ms,
                added_loss,
                ..
            } => {
                if !(added_latency_ms.is_finite() && *added_latency_ms >= 0.0) {
                    return Err(format!(
                        "added_latency_ms is {added_latency_ms}, but must be 0 or more"
                    ));
                }
                if !(0.0..=1.0).contains(added_loss) {
                    return Err(format!(
                        "added_loss is {added_loss}, but must be between 0 and 1"
                    ));
                }
            }
            Fault::FlappingLink { every_ticks: 0, .. } => {
                return Err("every_ticks must be at least 1".to_owned());
            }
            Fault::Partition { nodes, .. } if nodes.is_empty() => {
                return Err("a partition needs at least one node".to_owned());
            }
            _ => {}
        }
        Ok(())
    }
}

impl FaultScript {
    /// Parses a fault file's text. `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, SimError> {
        let script: Self = toml::from_str(text).map_err(|e| SimError::Faults {
            file: file.to_owned(),
            detail: e.to_string(),
        })?;
        for (i, f) in script.fault.iter().enumerate() {
            f.check_numbers().map_err(|detail| SimError::Faults {
                file: file.to_owned(),
                detail: format!("fault {} ({}): {detail}", i + 1, f.kind()),
            })?;
        }
        Ok(script)
    }

    /// Reads and parses a fault file.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Faults {
            file: file.clone(),
            detail: format!("cannot read it: {e}"),
        })?;
        Self::parse(&file, &text)
    }
}

/// A demo script for a mesh of `nodes` nodes (at least 4): one fault of each kind, 20 s
/// apart, each lasting 15 s except the CPU hog, which waits for a restart. Only ring links are
/// named, so it fits every seed.
pub fn default_script(nodes: usize) -> FaultScript {
    let n = |i: usize| NodeId::new(format!("n{}", i % nodes.max(1))).expect("a valid id");
    let lasting = Some(15.0);
    FaultScript {
        fault: vec![
            Fault::LinkDegradation {
                start_s: 5.0,
                duration_s: lasting,
                a: n(0),
                b: n(1),
                added_latency_ms: 80.0,
                added_loss: 0.3,
            },
            Fault::CpuHog {
                start_s: 25.0,
                duration_s: None,
                node: n(2),
            },
            Fault::FlappingLink {
                start_s: 45.0,
                duration_s: lasting,
                a: n(3),
                b: n(4),
                every_ticks: DEFAULT_FLAP_TICKS,
            },
            Fault::NodeCrash {
                start_s: 65.0,
                duration_s: lasting,
                node: n(5),
            },
            Fault::Partition {
                start_s: 85.0,
                duration_s: lasting,
                nodes: vec![n(nodes / 2), n(nodes / 2 + 1)],
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../faults.example.toml");
        let script = FaultScript::parse("faults.example.toml", text).unwrap();
        let kinds: Vec<&str> = script.fault.iter().map(Fault::kind).collect();
        assert_eq!(
            kinds,
            [
                "link_degradation",
                "cpu_hog",
                "flapping_link",
                "node_crash",
                "partition"
            ]
        );
    }

    #[test]
    fn unknown_fields_and_bad_numbers_are_refused_by_name() {
        let typo = "[[fault]]\nkind = \"cpu_hog\"\nstart_s = 1\nnode = \"n1\"\nnodes = []\n";
        let err = FaultScript::parse("f.toml", typo).unwrap_err().to_string();
        assert!(err.contains("f.toml") && err.contains("nodes"), "{err}");

        let loss = "[[fault]]\nkind = \"link_degradation\"\nstart_s = 1\na = \"n0\"\n\
                    b = \"n1\"\nadded_loss = 2.0\n";
        let err = FaultScript::parse("f.toml", loss).unwrap_err().to_string();
        assert!(
            err.contains("fault 1 (link_degradation): added_loss"),
            "{err}"
        );
    }

    #[test]
    fn a_fault_is_active_from_its_start_for_its_duration() {
        let f = &default_script(8).fault[0];
        assert!(!f.active_at(4_999));
        assert!(f.active_at(5_000));
        assert!(f.active_at(19_999));
        assert!(!f.active_at(20_000));
    }
}
