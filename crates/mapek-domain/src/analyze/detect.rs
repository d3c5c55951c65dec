//! The detectors: pure readings of a node's windows against the thresholds.
//!
//! Each detector returns `None` when the sample gave it nothing new to judge (the metric was
//! absent), so an absent metric neither opens nor resolves anything. A [`Reading`] carries
//! the verdict the hysteresis needs and the facts a symptom's summary and evidence are made
//! from; text is only built when a symptom is emitted.

use super::AnalyzeConfig;
use super::hysteresis::{NO_PEER, Verdict};
use super::state::{NodeState, Readings};
use super::window::Link;
use crate::Telemetry;

/// One evaluation of one detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Reading {
    /// What the hysteresis decides on.
    pub(crate) verdict: Verdict,
    /// The statistics behind it.
    pub(crate) facts: Facts,
}

/// The statistics a detector decided on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Facts {
    /// High latency.
    Latency {
        /// The node's latency percentile, when it reports `latency_ms`.
        node: Option<f64>,
        /// Samples in the latency window.
        samples: usize,
        /// The baseline, once ready.
        baseline: Option<f64>,
        /// The links judged against the absolute threshold.
        links: LinkFacts,
    },
    /// Packet loss.
    Loss {
        /// The node's window mean, when it reports `loss`.
        mean: Option<f64>,
        /// Samples in the loss window.
        samples: usize,
        /// The links judged against the threshold.
        links: LinkFacts,
    },
    /// CPU or memory saturation.
    Saturation {
        /// The window mean.
        mean: f64,
        /// Samples in the window.
        samples: usize,
    },
    /// Silence.
    Silence {
        /// Watermark minus the node's last event time.
        silent_for_ms: i64,
        /// The node's last event time.
        last_seen_ms: i64,
        /// The highest event time seen from any node.
        watermark_ms: i64,
        /// How long the node had been silent when it reported again (for a resolve).
        gap_ms: i64,
    },
    /// A flapping link.
    Flapping {
        /// Transitions of the blamed (or busiest) link in the window.
        transitions: u32,
    },
}

/// How a node's links stand against a threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LinkFacts {
    /// The worst value among up links.
    pub(crate) worst: Option<f64>,
    /// The blamed link's value, when a peer is blamed.
    pub(crate) blamed: Option<f64>,
    /// Up links over the threshold.
    pub(crate) over: usize,
    /// Up links with a value.
    pub(crate) up: usize,
}

/// The link to blame, and the facts about all of them.
///
/// A peer is blamed only when some links, not all, are over: when every one of two or more
/// links is bad, the node itself is the likelier cause and rerouting would not help. The peer
/// blamed by the open incident (`sticky`) stays blamed while its link is still over, so two
/// bad links do not make the blame (and the updates) bounce between them.
fn blame(
    links: &[Link],
    value: impl Fn(&Link) -> Option<f64>,
    over: impl Fn(f64) -> bool,
    sticky: u32,
) -> (u32, LinkFacts) {
    let mut facts = LinkFacts::default();
    let mut worst: Option<(u32, f64)> = None;
    let mut kept = None;
    for l in links.iter().filter(|l| l.up()) {
        let Some(x) = value(l) else { continue };
        facts.up += 1;
        if over(x) {
            facts.over += 1;
            if l.peer == sticky {
                kept = Some((l.peer, x));
            }
        }
        // Strictly greater: on a tie the first link by peer name stays the worst.
        if worst.is_none_or(|(_, w)| x > w) {
            worst = Some((l.peer, x));
        }
    }
    facts.worst = worst.map(|(_, x)| x);
    let everyone = facts.up >= 2 && facts.over == facts.up;
    if facts.over == 0 || everyone {
        return (NO_PEER, facts);
    }
    let (peer, x) = kept
        .or(worst)
        .expect("a link is over, so there is a worst one");
    facts.blamed = Some(x);
    (peer, facts)
}

/// High latency: the window percentile against the absolute threshold and the node's
/// baseline, and each up link's average against the absolute threshold.
pub(crate) fn latency(
    node: &NodeState,
    t: &Telemetry,
    readings: &Readings,
    config: &AnalyzeConfig,
    sticky: u32,
    scratch: &mut Vec<f32>,
) -> Option<Reading> {
    if readings.latency_ms.is_none() && t.links.is_empty() {
        return None;
    }
    let abs = config.latency_threshold_ms;
    let baseline = node
        .baseline
        .ready(config.baseline_min_samples, config.baseline_floor_ms);
    let limit = effective_latency_limit(baseline, config);
    let p = node.latency.percentile(config.latency_percentile, scratch);
    let (peer, links) = blame(&node.links, Link::latency, |x| x > abs, sticky);
    let node_ratio = p.map_or(0.0, |p| p / limit);
    let link_ratio = links.worst.map_or(0.0, |w| w / abs);
    let breach = p.is_some_and(|p| p > limit) || links.over > 0;
    Some(Reading {
        verdict: Verdict {
            breach,
            severity: node_ratio.max(link_ratio),
            peer,
        },
        facts: Facts::Latency {
            node: p,
            samples: node.latency.len(),
            baseline,
            links,
        },
    })
}

/// The latency a node's percentile must stay at or under: the absolute threshold, or the
/// baseline times its factor when that is lower.
pub(crate) fn effective_latency_limit(baseline: Option<f64>, config: &AnalyzeConfig) -> f64 {
    let abs = config.latency_threshold_ms;
    baseline.map_or(abs, |b| abs.min(b * config.baseline_factor))
}

/// Packet loss: the window mean and each up link's average against the threshold.
pub(crate) fn loss(
    node: &NodeState,
    t: &Telemetry,
    readings: &Readings,
    config: &AnalyzeConfig,
    sticky: u32,
) -> Option<Reading> {
    if readings.loss.is_none() && t.links.is_empty() {
        return None;
    }
    let threshold = config.loss_threshold;
    let mean = node.loss.mean();
    let (peer, links) = blame(&node.links, Link::loss, |x| x >= threshold, sticky);
    let worst = mean.unwrap_or(0.0).max(links.worst.unwrap_or(0.0));
    Some(Reading {
        verdict: Verdict {
            breach: mean.is_some_and(|m| m >= threshold) || links.over > 0,
            severity: worst / threshold,
            peer,
        },
        facts: Facts::Loss {
            mean,
            samples: node.loss.len(),
            links,
        },
    })
}

/// CPU (`cpu`) or memory (`mem`) saturation: the window mean against the threshold.
pub(crate) fn saturation(
    node: &NodeState,
    reading: Option<f64>,
    name: &str,
    threshold: f64,
) -> Option<Reading> {
    reading?;
    let ring = if name == "cpu" { &node.cpu } else { &node.mem };
    let mean = ring.mean()?;
    Some(Reading {
        verdict: Verdict {
            breach: mean >= threshold,
            severity: mean / threshold,
            peer: NO_PEER,
        },
        facts: Facts::Saturation {
            mean,
            samples: ring.len(),
        },
    })
}

/// Silence: how far the watermark is past the node's last telemetry. `gap_ms` is how long the
/// node went without reporting before its latest sample (0 when judged for another node).
pub(crate) fn silence(
    last_seen_ms: i64,
    watermark_ms: i64,
    gap_ms: i64,
    config: &AnalyzeConfig,
) -> Reading {
    let silent_for_ms = watermark_ms.saturating_sub(last_seen_ms).max(0);
    let threshold = config.silent_after_ms as f64;
    Reading {
        verdict: Verdict {
            breach: silent_for_ms as f64 >= threshold,
            severity: silent_for_ms as f64 / threshold,
            peer: NO_PEER,
        },
        facts: Facts::Silence {
            silent_for_ms,
            last_seen_ms,
            watermark_ms,
            gap_ms,
        },
    }
}

/// A flapping link: the link with the most up/down transitions in the window (the one already
/// blamed, while it still flaps) against the threshold. The peer is always named.
pub(crate) fn flapping(
    node: &NodeState,
    t: &Telemetry,
    config: &AnalyzeConfig,
    sticky: u32,
) -> Option<Reading> {
    if t.links.is_empty() {
        return None;
    }
    let mut busiest: Option<(u32, u32)> = None;
    let mut kept = None;
    for l in &node.links {
        let n = l.transitions(config.window);
        if l.peer == sticky && n >= config.flap_transitions {
            kept = Some((l.peer, n));
        }
        if busiest.is_none_or(|(_, b)| n > b) {
            busiest = Some((l.peer, n));
        }
    }
    let (peer, transitions) = kept.or(busiest)?;
    let breach = transitions >= config.flap_transitions;
    Some(Reading {
        verdict: Verdict {
            breach,
            severity: f64::from(transitions) / f64::from(config.flap_transitions),
            peer: if breach { peer } else { NO_PEER },
        },
        facts: Facts::Flapping { transitions },
    })
}
