//! The shape of a simulated mesh.

use serde::{Deserialize, Serialize};

/// How big the mesh is and how its links behave when nothing is wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// How many nodes, named `n0 .. n{N-1}` (at least 3, so the ring is a ring).
    pub nodes: usize,
    /// The fastest a healthy link is, in milliseconds; each link draws its base latency
    /// between this and `max_latency_ms`.
    pub min_latency_ms: f64,
    /// The slowest a healthy link is, in milliseconds.
    pub max_latency_ms: f64,
    /// The most loss a healthy link has (0..1); each link draws between 0 and this, so a
    /// healthy mesh is not perfectly clean and detectors see real baselines.
    pub max_base_loss: f64,
    /// How much samples wobble around their true value, as a fraction of it (0.05 = ±5 %).
    pub noise: f64,
    /// How many sites the nodes are spread over (`site-0` …, node `i` in site `i % sites`),
    /// so blast-radius limits have sites to count; 0 reports no site.
    pub sites: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            nodes: 12,
            min_latency_ms: 5.0,
            max_latency_ms: 20.0,
            max_base_loss: 0.005,
            noise: 0.05,
            sites: 3,
        }
    }
}

impl MeshConfig {
    /// Checks the numbers: at least 3 nodes, latencies ordered, fractions in range.
    pub fn check(&self) -> Result<(), String> {
        if !(3..=10_000).contains(&self.nodes) {
            return Err(format!("nodes is {}, but must be 3 to 10000", self.nodes));
        }
        let lat_ok = self.min_latency_ms.is_finite()
            && self.max_latency_ms.is_finite()
            && 0.0 <= self.min_latency_ms
            && self.min_latency_ms <= self.max_latency_ms;
        if !lat_ok {
            return Err(format!(
                "latencies {}..{} ms must be finite, 0 or more, and in order",
                self.min_latency_ms, self.max_latency_ms
            ));
        }
        for (name, v) in [("max_base_loss", self.max_base_loss), ("noise", self.noise)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} is {v}, but must be between 0 and 1"));
            }
        }
        Ok(())
    }
}
