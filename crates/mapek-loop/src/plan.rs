//! The plan stage: symptoms in, decisions out, with [`Planner`].
//!
//! The planner's state (open incidents, cooldowns, the blast radius) is a fold of the symptoms
//! and of the decisions it took on them; replaying the symptoms through the planner takes the
//! same decisions again, so rebuilding from the log (see [`crate::stage`]) restores it exactly.
//! A policy's blast radius with `scope = "mesh"` is judged by the executor over the whole
//! mesh; with `scope = "partition"` each partition's planner judges it over its own nodes.
//!
//! The same stage decides with a candidate policy beside the live one: a
//! `PlanStage<ShadowDecision>` reads the same symptoms through consumers of its own and
//! publishes on the shadow subjects (ADR 0020), unsigned, where no executor reads.
//!
//! Replaying with the live knowledge would not be exact: the knowledge grows as outcomes come
//! in, so a symptom decided on yesterday's knowledge could be decided differently today, and
//! the rebuilt state (which action is in cooldown) would not be the state the published
//! decisions came from. A rebuild therefore answers each symptom with the knowledge its
//! recorded decision consulted ([`RecordedKnowledge`]), read from the partition's decisions
//! before the replay starts.
//!
//! The same goes for a symptom past the acknowledged ones whose decision is already stored:
//! a worker that died (or lost its lease) between storing a decision and acknowledging its
//! symptom leaves the symptom to be delivered again to whoever takes the partition over. The
//! new worker's decision has the same id, so the server keeps the stored one; were it
//! decided on the new worker's knowledge, it could differ from the stored one (other
//! neighbours, another action), and every later decision would chain to a head that is not in
//! the log (`prev_hash`) and be judged from a state replay does not rebuild. So a live step
//! too answers a symptom that has a stored decision with the knowledge that decision
//! recorded, and comes out as the stored decision.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use mapek_audit::SigningKey;
use mapek_bus::{BusError, JetStream, StartAt, Subscriber};
use mapek_codec::AvroEvent;
use mapek_domain::plan::{NoKnowledge, RecordedKnowledge};
use mapek_domain::{
    Decision, KnowledgeView, Neighbour, Phase, Planner, Policy, ShadowDecision, Symptom,
};

use crate::stage::{Stage, partition_filter};

/// What a plan stage publishes: the live decisions, or a candidate policy's shadow decisions.
pub trait Decided: AvroEvent + From<Decision> + Send + Sync + 'static {
    /// The decision it carries.
    fn decision(&self) -> &Decision;
}

impl Decided for Decision {
    fn decision(&self) -> &Decision {
        self
    }
}

impl Decided for ShadowDecision {
    fn decision(&self) -> &Decision {
        &self.0
    }
}

/// A planner, the knowledge it consults, and the key it signs its decisions with; it
/// publishes `D`: [`Decision`]s, or a candidate's [`ShadowDecision`]s.
pub struct PlanStage<D = Decision> {
    planner: Planner,
    knowledge: Box<dyn KnowledgeView + Send>,
    /// Signs each decision's chain hash (ADR 0006); `None` publishes them unsigned.
    signer: Option<Arc<SigningKey>>,
    /// The knowledge each decision stored in the partition at start consulted, by symptom id,
    /// for the symptoms not stepped since (see [`recorded_knowledge`]).
    recorded: BTreeMap<String, Recorded>,
    publishes: PhantomData<fn() -> D>,
}

impl PlanStage {
    /// A live planner for `policy` that consults `knowledge`.
    pub fn new(policy: Policy, knowledge: Box<dyn KnowledgeView + Send>) -> Self {
        Self::publishing(policy, knowledge)
    }

    /// A live planner for `policy` with no past incidents to learn from.
    pub fn without_knowledge(policy: Policy) -> Self {
        Self::new(policy, Box::new(NoKnowledge))
    }
}

impl<D: Decided> PlanStage<D> {
    /// A planner for `policy` that consults `knowledge` and publishes `D`.
    pub fn publishing(policy: Policy, knowledge: Box<dyn KnowledgeView + Send>) -> Self {
        Self {
            planner: Planner::new(policy),
            knowledge,
            signer: None,
            recorded: BTreeMap::new(),
            publishes: PhantomData,
        }
    }

    /// Signs every decision with `key` (ML-DSA-65 over its chain hash), so executors with the
    /// public key act on it and `mapek audit verify` proves it.
    pub fn signed_by(mut self, key: Arc<SigningKey>) -> Self {
        self.signer = Some(key);
        self
    }

    /// The planner, for inspection.
    pub fn planner(&self) -> &Planner {
        &self.planner
    }
}

impl<D: Decided> Stage for PlanStage<D> {
    type In = Symptom;
    type Out = D;

    fn step(&mut self, symptom: &Symptom) -> Vec<D> {
        // A symptom decided under this policy by a worker that did not acknowledge it: its
        // decision is stored, and is the one to make again (see the module's doc).
        let stored = match self.recorded.remove(&symptom.symptom_id) {
            Some(Recorded {
                ours: true,
                knowledge,
            }) => Some(RecordedKnowledge::new(knowledge)),
            _ => None,
        };
        let knowledge: &dyn KnowledgeView = match &stored {
            Some(recorded) => recorded,
            None => self.knowledge.as_ref(),
        };
        let mut decisions: Vec<Decision> = self
            .planner
            .decide(symptom, knowledge)
            .into_iter()
            .collect();
        if let Some(key) = &self.signer {
            for d in &mut decisions {
                // Only a broken liboqs fails here (the key's size was checked when it was
                // loaded); the decision then goes out unsigned and executors with the public
                // key refuse it, which is the safe side.
                if let Err(e) = key.sign(d) {
                    tracing::error!(decision = %d.decision_id, error = %e, "cannot sign");
                }
            }
        }
        decisions.into_iter().map(D::from).collect()
    }

    fn rebuild_step(&mut self, symptom: &Symptom) {
        // A symptom with no recorded decision was decided on without consulting anything
        // (or not decided at all): no knowledge reproduces that.
        let knowledge = self
            .recorded
            .remove(&symptom.symptom_id)
            .map(|r| RecordedKnowledge::new(r.knowledge))
            .unwrap_or_default();
        let _ = self.planner.decide(symptom, &knowledge);
    }

    fn prepare(
        &mut self,
        js: &JetStream,
        partition: Option<u32>,
    ) -> impl Future<Output = Result<(), BusError>> + Send {
        let policy = self.planner.policy();
        let (hash, text) = (policy.hash().to_owned(), policy.text().to_owned());
        let recorded = &mut self.recorded;
        async move {
            // Before the first decision: decisions record only the policy's hash, and replay
            // and the executor (which judges the blast radius by it) read its text here. A
            // candidate's is kept too, for `mapek shadow diff`, but is not the one in force.
            if D::PHASE == Phase::Plan {
                mapek_bus::config_store::record_policy(js, &text).await?;
            } else {
                mapek_bus::config_store::record_candidate_policy(js, &text).await?;
            }
            *recorded = recorded_knowledge::<D>(js, partition, &hash).await?;
            Ok(())
        }
    }
}

/// What a stored decision consulted.
struct Recorded {
    /// Whether it was decided under this worker's policy.
    ours: bool,
    /// The past incidents it consulted.
    knowledge: Vec<Neighbour>,
}

/// The knowledge each decision `D` stored in the partition consulted, by symptom id. Where a
/// symptom was decided more than once, the first decision under this policy wins (as in
/// replay), else the first under any.
async fn recorded_knowledge<D: Decided>(
    js: &JetStream,
    partition: Option<u32>,
    policy_hash: &str,
) -> Result<BTreeMap<String, Recorded>, BusError> {
    let filter = partition_filter::<D>(partition);
    let mut decisions = Subscriber::<D>::open_subject(js, filter, StartAt::All).await?;
    let mut found: BTreeMap<String, Recorded> = BTreeMap::new();
    while let Some(received) = decisions.next_stored().await {
        let received = received?;
        if let Ok(d) = received.event {
            let d = d.decision();
            let ours = d.policy_hash == policy_hash;
            let keep = found.get(&d.symptom_id).is_none_or(|was| ours && !was.ours);
            if keep {
                let knowledge = d.knowledge.clone();
                found.insert(d.symptom_id.clone(), Recorded { ours, knowledge });
            }
        }
    }
    Ok(found)
}
