//! Evaluate after act: did an applied action's incident resolve in time?
//!
//! The [`Evaluator`] folds action results ([`Evaluator::apply`]) and symptoms
//! ([`Evaluator::observe`]) in whatever interleaving they arrive, and returns an [`Outcome`]
//! for each action it can judge:
//!
//! - **resolved**, when the action's incident gets a `resolve` symptom no later than the
//!   action's time plus the window (a resolve that came before the result arrived counts too).
//!   `recovery_ms` is the resolve's time minus the incident's `open` time, when the open was
//!   seen; `None` otherwise.
//! - **not resolved**, when the event-time watermark (the highest `ts_ms` of any symptom or
//!   result folded) passes the action's time plus the window with no resolve. Its time is
//!   that deadline.
//!
//! Only actions applied for real are judged: refused and failed actions changed nothing on
//! the node, and a dry run sent nothing, so an outcome for them would teach the knowledge
//! that doing nothing works. Escalations are judged like any applied action: whether the
//! incident resolved after a human was called is worth knowing.
//!
//! The ids are deterministic from the decision id ([`outcome_id`]), one outcome per decision.
//! Everything is in ordered maps, and outcomes of one step come out by deadline, then
//! decision id; for the same interleaving of input the output is the same. Different
//! interleavings can differ only near a deadline: a resolve that arrives after other
//! symptoms moved the watermark past the deadline is too late, even if its own time was not.

use std::collections::BTreeMap;

use super::interlocks::REMEMBER_MS;
use super::{outcome_id, secs};
use crate::{
    ActionKind, ActionResult, ActionStatus, NodeId, Outcome, OutcomeResult, Symptom, SymptomState,
};

/// An applied action waiting for its verdict.
#[derive(Clone, Debug, PartialEq)]
struct Watch {
    decision_id: String,
    incident_id: String,
    node: NodeId,
    kind: ActionKind,
    applied_ms: i64,
}

/// Judges applied actions by whether their incident resolved within the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluator {
    window_ms: i64,
    watermark: Option<i64>,
    /// Open time of each incident seen opening and not yet resolved.
    open: BTreeMap<String, i64>,
    /// Incidents seen resolving: their open time (if seen) and resolve time, kept for a
    /// window after the resolve for results that arrive late.
    resolved: BTreeMap<String, (Option<i64>, i64)>,
    /// Applied actions not yet judged, by decision id.
    watching: BTreeMap<String, Watch>,
    /// Decisions already judged, with their deadline, so a duplicate result is ignored.
    judged: BTreeMap<String, i64>,
}

impl Evaluator {
    /// An evaluator that gives each action `window_ms` of event time to resolve its incident.
    pub fn new(window_ms: i64) -> Self {
        Self {
            window_ms,
            watermark: None,
            open: BTreeMap::new(),
            resolved: BTreeMap::new(),
            watching: BTreeMap::new(),
            judged: BTreeMap::new(),
        }
    }

    /// The highest event time folded so far.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// How many applied actions wait for their verdict.
    pub fn pending(&self) -> usize {
        self.watching.len()
    }

    /// Whether the decision `decision_id` was already judged.
    pub fn is_judged(&self, decision_id: &str) -> bool {
        self.judged.contains_key(decision_id)
    }

    /// Marks a decision as judged without judging it: for rebuilding from the outcomes
    /// already stored, so a restarted worker does not judge an action twice.
    pub fn mark_judged(&mut self, outcome: &Outcome) {
        self.watching.remove(&outcome.decision_id);
        self.judged
            .insert(outcome.decision_id.clone(), outcome.ts_ms);
    }

    /// Folds an action result; returns the outcomes it settles (its own, if its incident
    /// already resolved or its deadline already passed, and any others whose deadline its
    /// time passes).
    pub fn apply(&mut self, result: &ActionResult) -> Vec<Outcome> {
        let mut out = Vec::new();
        let judged = result.status == ActionStatus::Applied && !result.dry_run;
        if judged
            && !self.judged.contains_key(&result.decision_id)
            && !self.watching.contains_key(&result.decision_id)
        {
            let watch = Watch {
                decision_id: result.decision_id.clone(),
                incident_id: result.incident_id.clone(),
                node: result.node.clone(),
                kind: result.action.kind,
                applied_ms: result.ts_ms,
            };
            let deadline = watch.applied_ms.saturating_add(self.window_ms);
            match self.resolved.get(&watch.incident_id) {
                Some(&(opened, at)) if at <= deadline => {
                    out.push(self.judge_resolved(&watch, opened, at));
                }
                _ => {
                    self.watching.insert(watch.decision_id.clone(), watch);
                }
            }
        }
        self.advance(result.ts_ms, &mut out);
        out
    }

    /// Folds a symptom; returns the outcomes it settles: a resolve settles its incident's
    /// actions, and its time may pass other actions' deadlines.
    pub fn observe(&mut self, symptom: &Symptom) -> Vec<Outcome> {
        let mut out = Vec::new();
        let incident = &symptom.incident_id;
        match symptom.state {
            SymptomState::Open => {
                let at = self.open.entry(incident.clone()).or_insert(symptom.ts_ms);
                *at = (*at).min(symptom.ts_ms);
            }
            SymptomState::Update => {}
            SymptomState::Resolve => {
                let opened = self.open.remove(incident);
                self.resolved
                    .insert(incident.clone(), (opened, symptom.ts_ms));
                let settled: Vec<Watch> = self
                    .watching
                    .values()
                    .filter(|w| {
                        &w.incident_id == incident
                            && symptom.ts_ms <= w.applied_ms.saturating_add(self.window_ms)
                    })
                    .cloned()
                    .collect();
                for w in settled {
                    self.watching.remove(&w.decision_id);
                    out.push(self.judge_resolved(&w, opened, symptom.ts_ms));
                }
            }
        }
        self.advance(symptom.ts_ms, &mut out);
        out
    }

    fn judge_resolved(&mut self, w: &Watch, opened: Option<i64>, at: i64) -> Outcome {
        let deadline = w.applied_ms.saturating_add(self.window_ms);
        self.judged.insert(w.decision_id.clone(), deadline);
        let recovery_ms = opened.map(|o| at - o);
        let since_open = match recovery_ms {
            Some(r) => format!("{:.1} s after it opened", r as f64 / 1000.0),
            None => "its opening was not seen".to_owned(),
        };
        Outcome {
            outcome_id: outcome_id(&w.decision_id),
            decision_id: w.decision_id.clone(),
            incident_id: w.incident_id.clone(),
            node: w.node.clone(),
            ts_ms: at,
            result: OutcomeResult::Resolved,
            recovery_ms,
            detail: format!(
                "incident {} on {} resolved {:.1} s after {} was applied ({since_open})",
                w.incident_id,
                w.node,
                (at - w.applied_ms) as f64 / 1000.0,
                w.kind.as_str()
            ),
        }
    }

    /// Moves the watermark to `ts_ms` (if later) and settles every action whose deadline it
    /// passed as not resolved, by deadline, then decision id.
    fn advance(&mut self, ts_ms: i64, out: &mut Vec<Outcome>) {
        let w = self.watermark.map_or(ts_ms, |w| w.max(ts_ms));
        self.watermark = Some(w);
        let mut expired: Vec<(i64, Watch)> = self
            .watching
            .values()
            .map(|x| (x.applied_ms.saturating_add(self.window_ms), x))
            .filter(|(deadline, _)| *deadline < w)
            .map(|(deadline, x)| (deadline, x.clone()))
            .collect();
        expired.sort_by(|a, b| (a.0, &a.1.decision_id).cmp(&(b.0, &b.1.decision_id)));
        for (deadline, x) in expired {
            self.watching.remove(&x.decision_id);
            self.judged.insert(x.decision_id.clone(), deadline);
            out.push(Outcome {
                outcome_id: outcome_id(&x.decision_id),
                decision_id: x.decision_id.clone(),
                incident_id: x.incident_id.clone(),
                node: x.node.clone(),
                ts_ms: deadline,
                result: OutcomeResult::NotResolved,
                recovery_ms: None,
                detail: format!(
                    "incident {} on {} still open {} after {} was applied",
                    x.incident_id,
                    x.node,
                    secs(self.window_ms),
                    x.kind.as_str()
                ),
            });
        }
        // What no later input can need: resolves more than a window behind; verdicts are
        // remembered as long as the executor remembers its decisions, for duplicates.
        let since = w.saturating_sub(self.window_ms);
        self.resolved.retain(|_, (_, at)| *at > since);
        let remember = w.saturating_sub(self.window_ms.max(REMEMBER_MS));
        self.judged.retain(|_, deadline| *deadline > remember);
    }
}
