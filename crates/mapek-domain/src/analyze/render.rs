//! Turning a reading into a [`Symptom`]: deterministic ids, evidence and a one-line summary.

use std::collections::BTreeMap;

use super::AnalyzeConfig;
use super::detect::{Facts, LinkFacts, Reading, effective_latency_limit};
use crate::{EventId, NodeId, Symptom, SymptomKind, SymptomState, Telemetry};

/// The id of the incident of `kind` on `node` that the telemetry of time `opened_ts_ms` opened.
/// Every symptom of the incident carries it, so it groups open, updates and resolve.
pub fn incident_id(node: &NodeId, kind: SymptomKind, opened_ts_ms: i64) -> String {
    EventId::builder("incident")
        .str(node.as_str())
        .str(kind.as_str())
        .i64(opened_ts_ms)
        .finish()
}

/// The id of the symptom in `state` of incident `incident_id` caused by the telemetry event
/// `caused_by`: a replay that sees the same telemetry makes the same id, and JetStream dedups.
pub fn symptom_id(incident_id: &str, state: SymptomState, caused_by: &str) -> String {
    EventId::builder("symptom")
        .str(incident_id)
        .str(state.as_str())
        .str(caused_by)
        .finish()
}

/// What a symptom is made from.
pub(crate) struct Emit<'a> {
    /// The node the symptom is about (for silence, not the one that reported).
    pub(crate) node: &'a NodeId,
    /// Its kind.
    pub(crate) kind: SymptomKind,
    /// Open, update or resolve.
    pub(crate) state: SymptomState,
    /// The reading that called for it.
    pub(crate) reading: &'a Reading,
    /// The peer blamed (for a resolve, the one last blamed).
    pub(crate) peer: Option<&'a NodeId>,
    /// Event time of the telemetry that opened the incident.
    pub(crate) opened_at: i64,
    /// The telemetry that tipped the detector.
    pub(crate) cause: &'a Telemetry,
    /// For the thresholds.
    pub(crate) config: &'a AnalyzeConfig,
}

impl Emit<'_> {
    /// The symptom.
    pub(crate) fn symptom(&self) -> Symptom {
        let incident_id = incident_id(self.node, self.kind, self.opened_at);
        let symptom_id = symptom_id(&incident_id, self.state, &self.cause.event_id);
        let (summary, evidence) = self.describe();
        Symptom {
            symptom_id,
            incident_id,
            node: self.node.clone(),
            ts_ms: self.cause.ts_ms,
            kind: self.kind,
            state: self.state,
            severity: tidy(self.reading.verdict.severity),
            peer: self.peer.cloned(),
            evidence,
            summary,
            caused_by: self.cause.event_id.clone(),
        }
    }

    fn describe(&self) -> (String, BTreeMap<String, f64>) {
        let c = self.config;
        let mut ev = Evidence::default();
        let over = self.state != SymptomState::Resolve;
        let verb = if over { "over" } else { "back under" };
        let peer = self.peer.map(NodeId::as_str);
        let summary = match self.reading.facts {
            Facts::Latency {
                node,
                samples,
                baseline,
                links,
            } => {
                let pct = c.latency_percentile;
                let abs = c.latency_threshold_ms;
                let limit = effective_latency_limit(baseline, c);
                ev.opt(&format!("p{pct}_latency_ms"), node);
                ev.put("latency_threshold_ms", abs);
                ev.put("latency_limit_ms", limit);
                ev.opt("baseline_latency_ms", baseline);
                ev.put("samples", samples as f64);
                ev.links("link_latency_ms", "worst_link_latency_ms", links);
                let node_ratio = node.map_or(0.0, |p| p / limit);
                let link_ratio = links.worst.map_or(0.0, |w| w / abs);
                let node_led = node.is_some() && (node_ratio >= link_ratio || !over);
                match node {
                    Some(p) if node_led => {
                        let mut s = if p > abs || limit >= abs {
                            let base = baseline.map_or("no baseline yet".to_owned(), |b| {
                                format!("baseline {b:.1} ms")
                            });
                            format!("p{pct} latency {p:.1} ms {verb} {abs} ms threshold ({base})")
                        } else {
                            let b = baseline.unwrap_or(limit);
                            let f = c.baseline_factor;
                            format!(
                                "p{pct} latency {p:.1} ms {verb} {f}× baseline {b:.1} ms \
                                 ({limit:.1} ms)"
                            )
                        };
                        if let (Some(peer), Some(x), true) = (peer, links.blamed, over) {
                            s += &format!("; link to {peer} at {x:.1} ms");
                        }
                        s
                    }
                    _ => {
                        let mut s = link_text(peer, links, over, &format!("{abs} ms"), |x| {
                            format!("{x:.1} ms")
                        });
                        s += &node.map_or(String::new(), |p| format!(" (p{pct} {p:.1} ms)"));
                        format!("latency: {s}")
                    }
                }
            }
            Facts::Loss {
                mean,
                samples,
                links,
            } => {
                let t = c.loss_threshold;
                ev.opt("mean_loss", mean);
                ev.put("loss_threshold", t);
                ev.put("samples", samples as f64);
                ev.links("link_loss", "worst_link_loss", links);
                let node_led = mean.is_some_and(|m| m >= links.worst.unwrap_or(0.0) || !over);
                match mean {
                    Some(m) if node_led => {
                        let mut s = format!("mean loss {} {verb} {} threshold", pc(m), pc(t));
                        if let (Some(peer), Some(x), true) = (peer, links.blamed, over) {
                            s += &format!("; link to {peer} at {}", pc(x));
                        }
                        s
                    }
                    _ => {
                        let mut s = link_text(peer, links, over, &pc(t), pc);
                        s += &mean.map_or(String::new(), |m| format!(" (node mean {})", pc(m)));
                        format!("loss: {s}")
                    }
                }
            }
            Facts::Saturation { mean, samples } => {
                let (name, t) = match self.kind {
                    SymptomKind::CpuSaturation => ("cpu", c.cpu_threshold),
                    _ => ("mem", c.mem_threshold),
                };
                ev.put(&format!("mean_{name}"), mean);
                ev.put(&format!("{name}_threshold"), t);
                ev.put("samples", samples as f64);
                let (m, t) = (pc(mean), pc(t));
                format!("mean {name} {m} {verb} {t} threshold over {samples} samples")
            }
            Facts::Silence {
                silent_for_ms,
                last_seen_ms,
                watermark_ms,
                gap_ms,
            } => {
                ev.exact("silent_for_ms", silent_for_ms);
                ev.exact("silent_after_ms", c.silent_after_ms as i64);
                ev.exact("last_seen_ms", last_seen_ms);
                ev.exact("watermark_ms", watermark_ms);
                let limit = secs(c.silent_after_ms as i64);
                if over {
                    let s = secs(silent_for_ms);
                    format!("no telemetry for {s} s of event time (threshold {limit} s)")
                } else {
                    ev.exact("gap_ms", gap_ms);
                    let s = secs(gap_ms);
                    format!("reporting again after {s} s of event time without telemetry")
                }
            }
            Facts::Flapping { transitions } => {
                let (w, t) = (c.window, c.flap_transitions);
                ev.put("transitions", transitions.into());
                ev.put("flap_threshold", t.into());
                ev.put("window", w as f64);
                let link = peer.map_or("a link".to_owned(), |p| format!("link to {p}"));
                let how = if over { "flapping" } else { "steady again" };
                format!(
                    "{link} {how}: {transitions} up/down transitions in the last {w} samples \
                     (threshold {t})"
                )
            }
        };
        (summary, ev.0)
    }
}

/// Summary text for a breach led by the links.
fn link_text(
    peer: Option<&str>,
    links: LinkFacts,
    over: bool,
    threshold: &str,
    show: impl Fn(f64) -> String,
) -> String {
    let worst = show(links.worst.unwrap_or(0.0));
    match (peer, links.blamed) {
        (Some(peer), Some(x)) if over => {
            format!("link to {peer} at {} over {threshold} threshold", show(x))
        }
        _ if over => format!(
            "all {} links over {threshold} threshold, worst {worst}",
            links.up
        ),
        _ => format!("links back under {threshold} threshold, worst {worst}"),
    }
}

/// The evidence map under construction.
#[derive(Default)]
struct Evidence(BTreeMap<String, f64>);

impl Evidence {
    /// A statistic, tidied.
    fn put(&mut self, key: &str, x: f64) {
        self.0.insert(key.to_owned(), tidy(x));
    }

    /// A statistic, if known.
    fn opt(&mut self, key: &str, x: Option<f64>) {
        if let Some(x) = x {
            self.put(key, x);
        }
    }

    /// A time or a count, as it is.
    fn exact(&mut self, key: &str, x: i64) {
        self.0.insert(key.to_owned(), x as f64);
    }

    /// The blamed and the worst link's values.
    fn links(&mut self, blamed: &str, worst: &str, links: LinkFacts) {
        self.opt(blamed, links.blamed);
        self.opt(worst, links.worst);
    }
}

/// Rounds to 7 significant digits. Windows hold `f32`, so `12.1` comes back as
/// `12.100000381…`; evidence should show what the node sent. Formatting is deterministic, so
/// this is too.
pub(crate) fn tidy(x: f64) -> f64 {
    format!("{x:.6e}").parse().unwrap_or(x)
}

/// A fraction as a percentage with one decimal.
fn pc(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Milliseconds as seconds with one decimal.
fn secs(ms: i64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}
