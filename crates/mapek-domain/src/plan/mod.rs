//! The plan phase: a policy, the planner's history and the knowledge of past incidents turn
//! symptoms into decisions.
//!
//! [`Planner::decide`] takes one [`Symptom`] and returns at most one [`Decision`]. It is pure:
//! time is the symptom's event time (cooldowns and the blast radius are judged against the
//! decisions already made, by their `ts_ms`), there is no randomness, and every map is
//! ordered. What the decision depended on beyond the symptom is recorded in it: the policy's
//! name and hash, and the past incidents consulted. Replay in verify mode feeds those back
//! ([`RecordedKnowledge`]) and must get the same decision, to the byte; `docs/policy.md`
//! describes the policy file and how the planner uses it.
//!
//! Deciding ([`handle`]) is split from folding ([`PlanState::observe`] for symptoms,
//! [`PlanState::apply`] for decisions); [`Planner`] holds a policy and a state and does both.
//!
//! # Layout
//! - [`policy`]: [`Policy`], the TOML policy file, its checks and its hash.
//! - [`features`](mod@features): [`features()`], the feature vector the knowledge store compares incidents by.
//! - [`knowledge`]: [`KnowledgeView`], the planner's window on past incidents, with
//!   [`NoKnowledge`] and [`RecordedKnowledge`].
//! - [`state`]: [`PlanState`], the fold of symptoms and decisions that cooldowns and the
//!   blast radius are judged from.
//! - [`planner`]: [`handle`], the decision itself: trigger, rule, ranking, interlocks.

pub mod features;
pub mod knowledge;
pub mod planner;
pub mod policy;
pub mod state;

#[cfg(test)]
pub(crate) mod tests;

pub use features::{DIM as FEATURE_DIM, FEATURES, FEATURES_VERSION, features};
pub use knowledge::{KnowledgeView, NoKnowledge, RecordedKnowledge};
pub use planner::{decision_id, handle};
pub use policy::{
    BlastRadius, Candidate, DEFAULT_POLICY, Fallback, KnowledgeSettings, Load, NO_RULE, Policy,
    PolicyError, PolicyFile, Rule, Scope,
};
pub use state::{OpenIncident, PlanState};

use crate::{Decision, Symptom};

/// The plan phase's logic with its policy and state: feed it symptoms in stream order.
#[derive(Clone, Debug)]
pub struct Planner {
    policy: Policy,
    state: PlanState,
    /// The chain hash of the last decision taken or folded: the next decision's `prev_hash`.
    chain_head: String,
}

impl Planner {
    /// A planner with `policy` and no history.
    pub fn new(policy: Policy) -> Self {
        let state = PlanState::new(&policy);
        Self {
            policy,
            state,
            chain_head: String::new(),
        }
    }

    /// The policy it decides by.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What it remembers.
    pub fn state(&self) -> &PlanState {
        &self.state
    }

    /// Decides about `symptom` ([`handle`]), then folds the symptom and the decision into the
    /// state, so the next symptom sees this decision's cooldown and blast radius.
    pub fn decide(&mut self, symptom: &Symptom, knowledge: &dyn KnowledgeView) -> Option<Decision> {
        let mut decision = handle(&self.policy, &self.state, symptom, knowledge);
        self.state.observe(symptom);
        if let Some(d) = &mut decision {
            d.prev_hash = std::mem::take(&mut self.chain_head);
            self.chain_head = d.chain_hash();
            self.state.apply(d);
        }
        decision
    }

    /// Folds a symptom without deciding about it, as [`PlanState::observe`]: for rebuilding
    /// the state from a log whose decisions are folded with [`Planner::apply`].
    pub fn observe(&mut self, symptom: &Symptom) {
        self.state.observe(symptom);
    }

    /// Folds a decision already made, as [`PlanState::apply`]: for rebuilding the state from
    /// the plan stream, each decision right after the symptom it answers.
    pub fn apply(&mut self, decision: &Decision) {
        self.chain_head = decision.chain_hash();
        self.state.apply(decision);
    }
}
