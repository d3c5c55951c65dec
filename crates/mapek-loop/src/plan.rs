//! The plan stage: symptoms in, decisions out, with [`Planner`].
//!
//! The planner's state (open incidents, cooldowns, the blast radius) is a fold of the symptoms
//! and of the decisions it took on them; replaying the symptoms through the planner takes the
//! same decisions again, so rebuilding from the log (see [`crate::stage`]) restores it exactly.
//! With several partitions, each partition's planner counts the blast radius over its own
//! nodes; the executor's interlocks count it over all of them.

use mapek_domain::plan::NoKnowledge;
use mapek_domain::{Decision, KnowledgeView, Planner, Policy, Symptom};

use crate::stage::Stage;

/// A planner and the knowledge it consults.
pub struct PlanStage {
    planner: Planner,
    knowledge: Box<dyn KnowledgeView + Send>,
}

impl PlanStage {
    /// A planner for `policy` that consults `knowledge`.
    pub fn new(policy: Policy, knowledge: Box<dyn KnowledgeView + Send>) -> Self {
        Self {
            planner: Planner::new(policy),
            knowledge,
        }
    }

    /// A planner for `policy` with no past incidents to learn from.
    pub fn without_knowledge(policy: Policy) -> Self {
        Self::new(policy, Box::new(NoKnowledge))
    }
}

impl Stage for PlanStage {
    type In = Symptom;
    type Out = Decision;

    fn step(&mut self, symptom: &Symptom) -> Vec<Decision> {
        self.planner
            .decide(symptom, self.knowledge.as_ref())
            .into_iter()
            .collect()
    }
}
