//! An incident as the index stores it: one point, its features as the vector, the rest as the
//! payload, folded from the incident's symptom, decisions and outcome.
//!
//! The three streams are read by separate consumers, so their events can reach the index in
//! any order (a decision before its symptom, an outcome before its decision). Each event sets
//! only its own fields, and the fields the search filters on are derived from all of them
//! ([`Incident::settle`]); folding the same events in any order, any number of times, gives
//! the same point. That is what makes a redelivery harmless.

use std::collections::BTreeMap;

use mapek_domain::plan::{FEATURE_DIM, FEATURES_VERSION, features};
use mapek_domain::{
    ActionKind, Decision, Neighbour, Outcome, OutcomeResult, Symptom, SymptomKind, SymptomState,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One past incident: the point's payload, and its features.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The incident id (`Mapek-Correlation`).
    pub incident_id: String,
    /// The node it was on.
    pub node: String,
    /// What kind of trouble; `None` until its opening symptom is projected.
    #[serde(default)]
    pub kind: Option<SymptomKind>,
    /// When it opened (event time, ms): the opening symptom's time.
    #[serde(default)]
    pub opened_ms: Option<i64>,
    /// The opening symptom's severity.
    #[serde(default)]
    pub severity: Option<f64>,
    /// The opening symptom's one-line summary, for people.
    #[serde(default)]
    pub summary: Option<String>,
    /// The peer blamed, for link-scoped incidents.
    #[serde(default)]
    pub peer: Option<String>,
    /// Every decision on it, by decision id: its action and time.
    #[serde(default)]
    pub decisions: BTreeMap<String, DecisionNote>,
    /// The latest outcome judged on it.
    #[serde(default)]
    pub outcome: Option<OutcomeNote>,
    /// Derived: the action the outcome judged (or, before an outcome, the latest decided).
    #[serde(default)]
    pub action: Option<ActionKind>,
    /// Derived: whether that action resolved it; `None` until an outcome is known.
    #[serde(default)]
    pub resolved: Option<bool>,
    /// Derived: when the outcome was judged (event time, ms); what "known before" filters on.
    #[serde(default)]
    pub outcome_ms: Option<i64>,
    /// Derived: features, outcome and its action are all known, so the planner may use it.
    #[serde(default)]
    pub ready: bool,
    /// The feature layout the vector was built with ([`FEATURES_VERSION`]); 0 without one.
    #[serde(default)]
    pub features_version: u32,
    /// The feature vector; empty until the opening symptom is projected. Stored as the
    /// point's vector, not in the payload.
    #[serde(skip)]
    pub features: Vec<f32>,
}

/// A decision taken on an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionNote {
    /// The action decided.
    pub action: ActionKind,
    /// The decision's time (event time, ms).
    pub ts_ms: i64,
}

/// What came of an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeNote {
    /// The decision whose action was judged.
    pub decision_id: String,
    /// Resolved or not.
    pub resolved: bool,
    /// When it was judged (event time, ms).
    pub ts_ms: i64,
    /// From opening to resolution, when it resolved.
    #[serde(default)]
    pub recovery_ms: Option<i64>,
}

impl Incident {
    /// An incident known only by its id and node.
    pub fn new(incident_id: &str, node: &str) -> Self {
        Self {
            incident_id: incident_id.to_owned(),
            node: node.to_owned(),
            ..Self::default()
        }
    }

    /// The incident `symptom` opened, with `decision` and `outcome` folded in where given:
    /// the point the projection makes of those events, for indexes filled without a log
    /// (tests, benchmarks).
    pub fn folded(
        symptom: &Symptom,
        decision: Option<&Decision>,
        outcome: Option<&Outcome>,
    ) -> Self {
        let mut incident = Self::new(&symptom.incident_id, symptom.node.as_str());
        incident.apply_symptom(symptom);
        if let Some(d) = decision {
            incident.apply_decision(d);
        }
        if let Some(o) = outcome {
            incident.apply_outcome(o);
        }
        incident
    }

    /// Folds a symptom: only the one that opens the incident is kept (its features are what
    /// the planner compares a new incident's opening with). Returns whether anything changed.
    pub fn apply_symptom(&mut self, s: &Symptom) -> bool {
        if s.state != SymptomState::Open || self.opened_ms.is_some() {
            return false;
        }
        self.kind = Some(s.kind);
        self.opened_ms = Some(s.ts_ms);
        self.severity = Some(s.severity);
        self.summary = Some(s.summary.clone());
        self.peer = s.peer.as_ref().map(|p| p.as_str().to_owned());
        self.features = features(s).to_vec();
        self.features_version = FEATURES_VERSION;
        self.settle();
        true
    }

    /// Folds a decision. Returns whether anything changed.
    pub fn apply_decision(&mut self, d: &Decision) -> bool {
        let note = DecisionNote {
            action: d.action.kind,
            ts_ms: d.ts_ms,
        };
        if self.decisions.get(&d.decision_id) == Some(&note) {
            return false;
        }
        self.decisions.insert(d.decision_id.clone(), note);
        self.settle();
        true
    }

    /// Folds an outcome: the latest by event time wins (ties by decision id, so the order
    /// they arrive in does not matter). Returns whether anything changed.
    pub fn apply_outcome(&mut self, o: &Outcome) -> bool {
        let note = OutcomeNote {
            decision_id: o.decision_id.clone(),
            resolved: o.result == OutcomeResult::Resolved,
            ts_ms: o.ts_ms,
            recovery_ms: o.recovery_ms,
        };
        let newer = self.outcome.as_ref().is_none_or(|old| {
            (note.ts_ms, &note.decision_id, note.resolved)
                > (old.ts_ms, &old.decision_id, old.resolved)
        });
        if !newer {
            return false;
        }
        self.outcome = Some(note);
        self.settle();
        true
    }

    /// Recomputes the derived fields from the folded ones.
    fn settle(&mut self) {
        let latest = self
            .decisions
            .iter()
            .max_by(|(ia, a), (ib, b)| a.ts_ms.cmp(&b.ts_ms).then_with(|| ia.cmp(ib)))
            .map(|(_, d)| d.action);
        let judged = self
            .outcome
            .as_ref()
            .and_then(|o| self.decisions.get(&o.decision_id))
            .map(|d| d.action);
        self.action = if self.outcome.is_some() {
            judged
        } else {
            latest
        };
        self.resolved = self.outcome.as_ref().map(|o| o.resolved);
        self.outcome_ms = self.outcome.as_ref().map(|o| o.ts_ms);
        self.ready = self.opened_ms.is_some() && judged.is_some() && self.outcome.is_some();
    }

    /// The neighbour the planner records, at `score`, once [`Incident::ready`].
    pub fn neighbour(&self, score: f64) -> Option<Neighbour> {
        Some(Neighbour {
            incident_id: self.incident_id.clone(),
            score,
            action: self.action?,
            resolved: self.resolved?,
        })
    }

    /// The vector to store: the features, or a placeholder for an incident whose opening
    /// symptom has not been projected yet (it is not `ready`, so no search returns it).
    pub fn vector(&self) -> Vec<f32> {
        if self.features.len() == FEATURE_DIM {
            return self.features.clone();
        }
        let mut v = vec![0.0; FEATURE_DIM];
        v[0] = 1.0;
        v
    }
}

/// A search: the nearest incidents to a vector, among those the planner may use.
#[derive(Clone, Debug, PartialEq)]
pub struct SimilarQuery {
    /// The feature vector to compare with.
    pub vector: Vec<f32>,
    /// Only incidents of this kind, if set.
    pub kind: Option<SymptomKind>,
    /// Only incidents whose outcome was judged strictly before this time (event time, ms):
    /// what was known at that moment, for the live planner and for replay.
    pub known_before_ms: Option<i64>,
    /// Leave this incident out (the one being decided).
    pub exclude: Option<String>,
    /// At most this many.
    pub k: usize,
}

impl SimilarQuery {
    /// The query the planner makes for `symptom`: same kind, known before its time, itself
    /// excluded.
    pub fn for_symptom(symptom: &Symptom, k: usize) -> Self {
        Self {
            vector: features(symptom).to_vec(),
            kind: Some(symptom.kind),
            known_before_ms: Some(symptom.ts_ms),
            exclude: Some(symptom.incident_id.clone()),
            k,
        }
    }

    /// How many to ask the engine for: a few more than `k`, so the excluded incident and
    /// ties at the boundary are settled here, by incident id, not by the engine's order.
    pub(crate) fn fetch(&self) -> usize {
        self.k + 1 + self.k.min(16)
    }
}

/// An incident found by a search, and how similar it is (cosine, higher is closer).
#[derive(Clone, Debug, PartialEq)]
pub struct Similar {
    /// Its similarity to the query.
    pub score: f64,
    /// The incident.
    pub incident: Incident,
}

/// Sorts hits best first, ties by incident id, drops the excluded one and keeps `k`.
pub(crate) fn settle_hits(mut hits: Vec<Similar>, query: &SimilarQuery) -> Vec<Similar> {
    hits.retain(|h| query.exclude.as_deref() != Some(h.incident.incident_id.as_str()));
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.incident.incident_id.cmp(&b.incident.incident_id))
    });
    hits.truncate(query.k);
    hits
}

/// The last stream sequence applied from each input stream, stored with the points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    /// MAPEK_ANALYZE.
    pub analyze: u64,
    /// MAPEK_PLAN.
    pub plan: u64,
    /// MAPEK_KNOWLEDGE.
    pub knowledge: u64,
}

/// The UUID of an incident's point: the first 16 bytes of SHA-256 over the incident id, with
/// the version and variant bits of an RFC 4122 UUID (version 8, custom), so the same incident
/// always lands on the same point, in every engine.
pub fn point_id(incident_id: &str) -> String {
    let digest = Sha256::digest(format!("mapek-incident/{incident_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The point that holds the projection's [`Offsets`]. Its id hashes a name no incident id
/// can take (incident ids are hex), and its payload has no `ready`, so no search returns it.
pub fn offsets_point_id() -> String {
    point_id("(offsets)")
}
