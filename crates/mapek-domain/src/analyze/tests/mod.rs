//! Given / when / then for the analyze phase.
//!
//! `given(history)` feeds telemetry to a fresh [`Analyzer`]; `.when(sample)` feeds more;
//! `.then_expect(|symptoms| …)` checks what the latest `given` or `when` emitted, and returns
//! the scenario so it can go on. Every symptom emitted anywhere must pass
//! the Symptom schema's own validation.

mod contract;
mod latency;
mod links;
mod metrics;
mod silence;

use std::collections::BTreeMap;

use super::{AnalyzeConfig, Analyzer, incident_id, symptom_id};
use crate::{Event, LinkSample, NodeId, Symptom, SymptomKind, SymptomState, Telemetry};

/// Far from any wall clock (2001-09-09), so a test that passes cannot lean on one.
pub(super) const T0: i64 = 1_000_000_000_000;

/// A telemetry sample under construction.
#[derive(Clone, Debug)]
pub(super) struct Sample(Telemetry);

/// A sample from `node`, `secs` seconds after [`T0`], with no metrics yet.
pub(super) fn at(node: &str, secs: i64) -> Sample {
    Sample(Telemetry::new(id(node), T0 + secs * 1000, BTreeMap::new()))
}

/// A node id.
pub(super) fn id(node: &str) -> NodeId {
    NodeId::new(node).unwrap()
}

impl Sample {
    /// Sets a metric.
    pub(super) fn metric(mut self, name: &str, x: f64) -> Self {
        self.0.metrics.insert(name.to_owned(), x);
        self
    }

    /// Sets `latency_ms`.
    pub(super) fn latency(self, ms: f64) -> Self {
        self.metric("latency_ms", ms)
    }

    /// Sets `loss`.
    pub(super) fn loss(self, x: f64) -> Self {
        self.metric("loss", x)
    }

    /// Sets `cpu`.
    pub(super) fn cpu(self, x: f64) -> Self {
        self.metric("cpu", x)
    }

    /// Sets `mem`.
    pub(super) fn mem(self, x: f64) -> Self {
        self.metric("mem", x)
    }

    /// Adds a link sample.
    pub(super) fn link(mut self, peer: &str, up: bool, latency_ms: f64, loss: f64) -> Self {
        self.0.links.push(LinkSample {
            peer: id(peer),
            up,
            latency_ms,
            loss,
        });
        self
    }
}

impl From<Sample> for Telemetry {
    fn from(Sample(mut t): Sample) -> Self {
        t.event_id = t.content_id();
        t.validate().expect("test telemetry is valid");
        t
    }
}

/// One sample a second from `node`, at seconds `secs`, each shaped by `shape`.
pub(super) fn series(
    node: &str,
    secs: impl IntoIterator<Item = i64>,
    shape: impl Fn(Sample) -> Sample,
) -> Vec<Telemetry> {
    secs.into_iter()
        .map(|s| shape(at(node, s)).into())
        .collect()
}

/// A scenario: an analyzer and everything it emitted so far.
pub(super) struct Scenario {
    analyzer: Analyzer,
    emitted: Vec<Symptom>,
    /// Where the output of the latest `given` or `when` begins in `emitted`.
    mark: usize,
}

/// Feeds `history` to an analyzer with the default config, but no periodic restatement of
/// open incidents (`update_every_ms`: tested on its own), so a scenario's updates are the
/// ones its evidence calls for.
pub(super) fn given(history: Vec<Telemetry>) -> Scenario {
    given_config(
        AnalyzeConfig {
            update_every_ms: 0,
            ..AnalyzeConfig::default()
        },
        history,
    )
}

/// Feeds `history` to an analyzer with `config`.
pub(super) fn given_config(config: AnalyzeConfig, history: Vec<Telemetry>) -> Scenario {
    let mut s = Scenario {
        analyzer: Analyzer::new(config),
        emitted: Vec::new(),
        mark: 0,
    };
    s.feed(history);
    s
}

impl Scenario {
    fn feed(&mut self, input: Vec<Telemetry>) {
        self.mark = self.emitted.len();
        for t in input {
            for s in self.analyzer.step(&t) {
                s.validate()
                    .expect("every symptom passes its schema's checks");
                self.emitted.push(s);
            }
        }
    }

    /// Feeds one sample.
    pub(super) fn when(self, t: impl Into<Telemetry>) -> Self {
        self.when_all(vec![t.into()])
    }

    /// Feeds several samples; `then_expect` sees what all of them emitted.
    pub(super) fn when_all(mut self, input: Vec<Telemetry>) -> Self {
        self.feed(input);
        self
    }

    /// Checks what the latest `given` or `when` emitted.
    pub(super) fn then_expect(self, check: impl FnOnce(&[Symptom])) -> Self {
        check(&self.emitted[self.mark..]);
        self
    }

    /// Checks that the latest `given` or `when` emitted nothing.
    pub(super) fn then_nothing(self) -> Self {
        assert_eq!(
            brief(&self.emitted[self.mark..]),
            [],
            "expected no symptoms"
        );
        self
    }

    /// Everything emitted so far.
    pub(super) fn history(&self) -> &[Symptom] {
        &self.emitted
    }

    /// The analyzer, for its state.
    pub(super) fn analyzer(&self) -> &Analyzer {
        &self.analyzer
    }
}

/// Node, kind and state of each symptom: enough to compare a sequence at a glance.
pub(super) fn brief(symptoms: &[Symptom]) -> Vec<(String, SymptomKind, SymptomState)> {
    symptoms
        .iter()
        .map(|s| (s.node.to_string(), s.kind, s.state))
        .collect()
}

/// The one symptom of a step, checked to be of `kind` and `state`.
pub(super) fn only(symptoms: &[Symptom], kind: SymptomKind, state: SymptomState) -> &Symptom {
    assert_eq!(
        symptoms.len(),
        1,
        "one symptom expected: {:#?}",
        brief(symptoms)
    );
    let s = &symptoms[0];
    assert_eq!((s.kind, s.state), (kind, state), "{s:#?}");
    s
}
