//! What the planner asks the knowledge about: past incidents like this one, and what worked.
//!
//! [`KnowledgeView`] is the planner's only window on the knowledge store. The live plan
//! worker implements it over Qdrant; replay in verify mode feeds back what a decision recorded
//! ([`RecordedKnowledge`]); tests and knowledge-free runs use [`NoKnowledge`].
//!
//! The planner keeps only the neighbours it can use (similar enough, finite score, not the
//! incident itself), sorts them nearest first and records exactly those in the decision.
//! Doing the same to the recorded list gives the same list back, which is what lets a replay
//! reproduce the decision byte for byte.

use std::cmp::Ordering;

use super::policy::KnowledgeSettings;
use crate::{ActionKind, Decision, Neighbour, Symptom};

/// Past incidents similar to a symptom, and the action taken on each and whether it worked.
///
/// # Contract
/// - Return at most `k` neighbours, higher `score` meaning more similar.
/// - Return only what was known before `symptom.ts_ms`: incidents whose outcome was recorded
///   at or after the symptom's time must not be seen. The live store holds nothing from the
///   future anyway; a store used by replay in what-if mode must filter, or the past would be
///   judged with knowledge it did not have.
/// - Be deterministic for a given symptom and store content: replay depends on it.
///
/// The order returned does not matter: the planner sorts.
pub trait KnowledgeView {
    /// Up to `k` past incidents similar to `symptom`, known before `symptom.ts_ms`.
    fn similar(&self, symptom: &Symptom, k: usize) -> Vec<Neighbour>;
}

/// No knowledge: every rule keeps its policy order.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKnowledge;

impl KnowledgeView for NoKnowledge {
    fn similar(&self, _: &Symptom, _: usize) -> Vec<Neighbour> {
        Vec::new()
    }
}

/// A fixed list of neighbours, whatever the symptom: the knowledge a recorded decision
/// consulted, fed back by replay in verify mode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedKnowledge {
    neighbours: Vec<Neighbour>,
}

impl RecordedKnowledge {
    /// These neighbours, for every symptom.
    pub fn new(neighbours: Vec<Neighbour>) -> Self {
        Self { neighbours }
    }

    /// What `decision` recorded it consulted.
    pub fn from_decision(decision: &Decision) -> Self {
        Self::new(decision.knowledge.clone())
    }
}

impl KnowledgeView for RecordedKnowledge {
    fn similar(&self, _: &Symptom, k: usize) -> Vec<Neighbour> {
        self.neighbours.iter().take(k).cloned().collect()
    }
}

impl<T: KnowledgeView + ?Sized> KnowledgeView for &T {
    fn similar(&self, symptom: &Symptom, k: usize) -> Vec<Neighbour> {
        (**self).similar(symptom, k)
    }
}

/// Asks `view` about `symptom` and keeps what the planner may use, nearest first.
///
/// Dropped: non-finite scores (a decision must carry finite numbers), scores under
/// `min_score`, and the symptom's own incident (a store that already holds it would
/// otherwise vote for whatever was just done). Applying this to its own output changes
/// nothing, so recorded knowledge replays to the same list.
pub(crate) fn consult(
    view: &dyn KnowledgeView,
    symptom: &Symptom,
    settings: &KnowledgeSettings,
) -> Vec<Neighbour> {
    if settings.neighbours == 0 {
        return Vec::new();
    }
    let mut found: Vec<Neighbour> = view
        .similar(symptom, settings.neighbours)
        .into_iter()
        .filter(|n| n.score.is_finite() && n.score >= settings.min_score)
        .filter(|n| n.incident_id != symptom.incident_id)
        .collect();
    found.sort_by(nearest_first);
    found.truncate(settings.neighbours);
    found
}

/// Highest score first; ties by incident id, then action, then outcome, so the order is total
/// and never depends on the order the store answered in.
fn nearest_first(a: &Neighbour, b: &Neighbour) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.incident_id.cmp(&b.incident_id))
        .then_with(|| a.action.cmp(&b.action))
        .then_with(|| a.resolved.cmp(&b.resolved))
}

/// The evidence for `action`: the sum of the scores of the neighbours where it resolved the
/// incident, minus the sum of those where it did not. `None` when no neighbour took it.
///
/// Summed in the neighbours' (sorted) order, so the same neighbours give the same bits.
pub(crate) fn evidence(neighbours: &[Neighbour], action: ActionKind) -> Option<f64> {
    neighbours
        .iter()
        .filter(|n| n.action == action)
        .map(|n| if n.resolved { n.score } else { -n.score })
        .fold(None, |sum, x| Some(sum.unwrap_or(0.0) + x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str, score: f64, action: ActionKind, resolved: bool) -> Neighbour {
        Neighbour {
            incident_id: id.into(),
            score,
            action,
            resolved,
        }
    }

    #[test]
    fn evidence_weighs_resolved_against_failed_by_similarity() {
        let ns = [
            n("a", 0.9, ActionKind::Reroute, false),
            n("b", 0.5, ActionKind::Reroute, true),
            n("c", 0.7, ActionKind::Quarantine, true),
        ];
        let reroute = evidence(&ns, ActionKind::Reroute).unwrap();
        assert!((reroute - -0.4).abs() < 1e-12, "{reroute}");
        assert_eq!(evidence(&ns, ActionKind::Quarantine), Some(0.7));
        assert_eq!(evidence(&ns, ActionKind::RateLimit), None);
    }

    #[test]
    fn recorded_knowledge_returns_its_list_whatever_the_symptom() {
        let ns = vec![n("a", 0.9, ActionKind::Reroute, true)];
        let view = RecordedKnowledge::new(ns.clone());
        let s = crate::plan::tests::open("n1", crate::SymptomKind::HighLatency, 0, 2.0);
        assert_eq!(view.similar(&s, 5), ns);
        assert_eq!(view.similar(&s, 0), vec![]);
        assert_eq!(NoKnowledge.similar(&s, 5), vec![]);
    }
}
