//! The interlocks every action passes before it reaches a node, and the state they are judged
//! from: a fold of the action results.
//!
//! The state is folded from [`ActionResult`]s ([`Interlocks::apply`]), in log order, the
//! outcomes that end an action's time under action ([`Interlocks::apply_outcome`]), and the
//! leases the executor takes while a command is out ([`Interlocks::begin`]). Time is the
//! decision's event time (`ts_ms`), never a clock, so the same log gives the same verdicts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use super::{ExecuteConfig, secs};
use crate::plan::{Load, Policy, Scope};
use crate::{ActionKind, ActionResult, ActionStatus, Decision, NodeId, Outcome};

/// How long the ids of decisions already acted on are remembered, in ms of event time, at
/// least: a decision delivered again within that time (a crash before its ack) is recognised
/// and not acted on twice.
pub const REMEMBER_MS: i64 = 24 * 3600 * 1000;

/// The interlocks, in the order they are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interlock {
    /// Another action is in flight on the node.
    Lease,
    /// The node had an action applied too recently.
    Cooldown,
    /// Too many actions were applied within the window, over all nodes.
    RateLimit,
    /// Too many nodes would be under action at once, or too many actions within the window,
    /// as the decision's policy says (`[blast_radius]`, scope `mesh`).
    BlastRadius,
    /// The executor records what it would do and sends nothing.
    DryRun,
    /// The action waits for a human's approval.
    Approval,
}

impl Interlock {
    /// Its name in reasons and docs: `lease`, `cooldown`, `rate limit`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Interlock::Lease => "lease",
            Interlock::Cooldown => "cooldown",
            Interlock::RateLimit => "rate limit",
            Interlock::BlastRadius => "blast radius",
            Interlock::DryRun => "dry run",
            Interlock::Approval => "approval",
        }
    }
}

/// Why an interlock stopped an action: which one, and a sentence for the operator that starts
/// with its name (`cooldown: n7 had restart_service applied 12.0 s ago, cooldown is 60 s`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The first interlock that failed.
    pub interlock: Interlock,
    /// Why, in one readable sentence.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// An action that reached a node (or would have, in dry-run), remembered for the cooldown,
/// the rate limit and the blast radius.
#[derive(Clone, Debug, PartialEq)]
struct Applied {
    ts_ms: i64,
    node: NodeId,
    decision_id: String,
    /// Its outcome is in: the node is no longer under action because of it.
    judged: bool,
}

/// A command out to a node, not yet recorded.
#[derive(Clone, Debug, PartialEq)]
struct Lease {
    decision_id: String,
    kind: ActionKind,
    /// The other executor that sent it; `None` for this one's.
    elsewhere: Option<String>,
}

/// A command another executor has out, as the executors' shared store lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOut {
    /// The node it went to.
    pub node: NodeId,
    /// The decision it carries out.
    pub decision_id: String,
    /// The action.
    pub kind: ActionKind,
    /// The executor that sent it.
    pub executor: String,
}

/// The interlocks' state: leases, the last action applied to each node, the actions applied
/// recently, and which decisions were already acted on.
#[derive(Clone, Debug, PartialEq)]
pub struct Interlocks {
    config: ExecuteConfig,
    /// The highest event time folded.
    watermark: Option<i64>,
    leases: BTreeMap<NodeId, Lease>,
    /// The latest applied action on each node: when, and what.
    last: BTreeMap<NodeId, (i64, ActionKind)>,
    /// Node-touching actions applied within the retention, in log order.
    applied: VecDeque<Applied>,
    /// Decisions already acted on (any status), with their time.
    done: BTreeMap<String, i64>,
    /// Decisions whose outcome was folded before their result, with the outcome's time.
    judged_early: BTreeMap<String, i64>,
    /// How many nodes the mesh reports, as last counted by the worker (0 before it counted).
    reporting: usize,
    /// The policies decisions were made under, by hash: their blast radius and escalation.
    policies: BTreeMap<String, Policy>,
}

impl Interlocks {
    /// No history, judged by `config`.
    pub fn new(config: ExecuteConfig) -> Self {
        Self {
            config,
            watermark: None,
            leases: BTreeMap::new(),
            last: BTreeMap::new(),
            applied: VecDeque::new(),
            done: BTreeMap::new(),
            judged_early: BTreeMap::new(),
            reporting: 0,
            policies: BTreeMap::new(),
        }
    }

    /// Tells how many nodes the mesh reports (the worker counts the nodes with telemetry on
    /// the monitor streams): the mesh's size for the blast radius, with the policy's floor.
    pub fn mesh_reports(&mut self, nodes: usize) {
        self.reporting = nodes;
    }

    /// Learns a policy (the worker reads it from where the plan workers recorded it): the
    /// decisions that record its hash are judged by its blast radius, and their refusals
    /// escalated as it says.
    pub fn learn_policy(&mut self, policy: Policy) {
        self.policies.insert(policy.hash().to_owned(), policy);
    }

    /// Whether the policy whose hash is `policy_hash` is known ([`Interlocks::learn_policy`]).
    pub fn knows_policy(&self, policy_hash: &str) -> bool {
        self.policies.contains_key(policy_hash)
    }

    /// Hands a refused action to a human, as the decision's policy says: `result` with the
    /// escalation's params (the fallback of the rule that decided it, or the policy's), or as
    /// it is when the policy records refusals only. A decision whose policy is not known is
    /// escalated with no params: nobody is left untold for want of a policy.
    pub fn escalate(&self, mut result: ActionResult, decision: &Decision) -> ActionResult {
        if result.status != ActionStatus::Refused {
            return result;
        }
        let fallback = self
            .policies
            .get(&decision.policy_hash)
            .map(|p| p.fallback_for(&decision.rule));
        result.escalation = match fallback {
            Some(f) if !f.escalate_refusals => None,
            Some(f) => Some(f.params.clone()),
            None => Some(BTreeMap::new()),
        };
        result
    }

    /// The configuration it judges by.
    pub fn config(&self) -> &ExecuteConfig {
        &self.config
    }

    /// Checks `decision` against every interlock in order (lease, cooldown, rate limit,
    /// blast radius, dry run, approval) and returns the first that fails. `approved` says
    /// whether a human approved this decision; it matters only when the config asks for it.
    ///
    /// An escalation touches no node and passes every interlock.
    pub fn check(&self, decision: &Decision, approved: bool) -> Result<(), Refusal> {
        let kind = decision.action.kind;
        if kind == ActionKind::Escalate {
            return Ok(());
        }
        let node = &decision.node;
        let now = decision.ts_ms;
        let refuse = |interlock: Interlock, why: String| {
            Err(Refusal {
                interlock,
                reason: format!("{}: {why}", interlock.as_str()),
            })
        };
        if let Some(lease) = self.leases.get(node)
            && lease.decision_id != decision.decision_id
        {
            let at = match &lease.elsewhere {
                Some(executor) => format!(" at executor {executor}"),
                None => String::new(),
            };
            return refuse(
                Interlock::Lease,
                format!(
                    "{node} has {} in flight{at} (decision {})",
                    lease.kind.as_str(),
                    lease.decision_id
                ),
            );
        }
        if let Some(&(at, what)) = self.last.get(node) {
            let ago = now - at;
            if ago < self.config.cooldown_ms {
                return refuse(
                    Interlock::Cooldown,
                    format!(
                        "{node} had {} applied {:.1} s ago, cooldown is {}",
                        what.as_str(),
                        ago as f64 / 1000.0,
                        secs(self.config.cooldown_ms)
                    ),
                );
            }
        }
        let rate = &self.config.rate_limit;
        let recent = self.applied_since(now - rate.window_ms).count();
        // Commands out count as applied: they may well be (one executor never has one out
        // when it judges; several executors do).
        let out = self.leases.len();
        if recent + out >= rate.max_actions as usize {
            let out = match out {
                0 => String::new(),
                1 => " and 1 command out".to_owned(),
                n => format!(" and {n} commands out"),
            };
            return refuse(
                Interlock::RateLimit,
                format!(
                    "{recent} actions applied in the last {}{out}, the limit is {} per {}",
                    secs(rate.window_ms),
                    rate.max_actions,
                    secs(rate.window_ms)
                ),
            );
        }
        if let Err(why) = self.blast_radius(decision) {
            return refuse(Interlock::BlastRadius, why);
        }
        if self.config.dry_run {
            return refuse(
                Interlock::DryRun,
                format!("{} on {node} would be sent; nothing was", kind.as_str()),
            );
        }
        if self.config.require_approval.required_for(kind) && !approved {
            return refuse(
                Interlock::Approval,
                format!(
                    "{} on {node} waits for approval: mapek approve {}",
                    kind.as_str(),
                    decision.decision_id
                ),
            );
        }
        Ok(())
    }

    /// Judges `decision`'s node action by its policy's blast radius over the whole mesh, when
    /// the policy leaves the blast radius to the executor (scope `mesh`); with scope
    /// `partition` the planner judged it. A policy it does not know is refused: how much of
    /// the mesh it may act on is unknown.
    fn blast_radius(&self, decision: &Decision) -> Result<(), String> {
        let hash = &decision.policy_hash;
        let Some(radius) = self.policies.get(hash).map(|p| &p.file().blast_radius) else {
            return Err(format!(
                "the policy that made the decision ({}, sha256 {}) is not recorded in \
                 MAPEK_CONFIG, so how much of the mesh it may act on is unknown",
                decision.policy_name,
                &hash[..hash.len().min(12)]
            ));
        };
        if radius.scope == Scope::Partition {
            return Ok(());
        }
        let since = decision.ts_ms.saturating_sub(radius.window_ms());
        let busy = self.under_action(since);
        let load = Load {
            seen: self.reporting,
            nodes_after: busy.len() + usize::from(!busy.contains(&decision.node)),
            // Commands out count as applied: they may well be (one executor never has one
            // out when it judges; several executors do).
            actions: self.applied_since(since).count() + self.leases.len(),
        };
        match radius.refuses(load) {
            None => Ok(()),
            Some(why) if busy.is_empty() => Err(why),
            Some(why) => {
                let names: Vec<&str> = busy.iter().map(|n| n.as_str()).collect();
                Err(format!("{why}; under action: {}", names.join(", ")))
            }
        }
    }

    /// Takes `decision`'s node lease while its command is out: until its result is applied,
    /// other decisions for the node are refused by [`Interlock::Lease`].
    pub fn begin(&mut self, decision: &Decision) {
        self.leases.insert(
            decision.node.clone(),
            Lease {
                decision_id: decision.decision_id.clone(),
                kind: decision.action.kind,
                elsewhere: None,
            },
        );
    }

    /// Replaces what is known of the commands other executors have out (several executors
    /// share them through Redis): they hold their nodes' leases and count toward the rate
    /// limit and the blast radius until their results are folded. A command whose result
    /// was already folded is over, whatever the list says.
    pub fn out_elsewhere(&mut self, commands: impl IntoIterator<Item = CommandOut>) {
        self.leases.retain(|_, l| l.elsewhere.is_none());
        for c in commands {
            if self.done.contains_key(&c.decision_id) || self.leases.contains_key(&c.node) {
                continue;
            }
            self.leases.insert(
                c.node,
                Lease {
                    decision_id: c.decision_id,
                    kind: c.kind,
                    elsewhere: Some(c.executor),
                },
            );
        }
    }

    /// Whether another executor has `decision_id`'s command out ([`Interlocks::out_elsewhere`]).
    pub fn out_elsewhere_for(&self, decision_id: &str) -> Option<&str> {
        self.leases
            .values()
            .find(|l| l.decision_id == decision_id)
            .and_then(|l| l.elsewhere.as_deref())
    }

    /// Folds a result: it releases its decision's lease, marks the decision as acted on, and,
    /// when applied (dry runs included, so a dry run is refused exactly where a live run
    /// would be) to a node, starts the node's cooldown and counts toward the rate limit and
    /// the blast radius. Escalations count toward none of them. Folding the same result twice
    /// changes nothing more.
    pub fn apply(&mut self, result: &ActionResult) {
        if self
            .leases
            .get(&result.node)
            .is_some_and(|l| l.decision_id == result.decision_id)
        {
            self.leases.remove(&result.node);
        }
        let seen = self
            .done
            .insert(result.decision_id.clone(), result.ts_ms)
            .is_some();
        let touches = result.action.kind != ActionKind::Escalate;
        if !seen && touches && result.status == ActionStatus::Applied {
            let last = self
                .last
                .entry(result.node.clone())
                .or_insert((result.ts_ms, result.action.kind));
            if result.ts_ms >= last.0 {
                *last = (result.ts_ms, result.action.kind);
            }
            self.applied.push_back(Applied {
                ts_ms: result.ts_ms,
                node: result.node.clone(),
                decision_id: result.decision_id.clone(),
                judged: self.judged_early.remove(&result.decision_id).is_some(),
            });
        }
        self.watermark = Some(self.watermark.map_or(result.ts_ms, |w| w.max(result.ts_ms)));
        self.prune();
    }

    /// Folds an outcome: the action it judged no longer keeps its node under action for the
    /// blast radius (it still counts toward `max_actions` and the rate limit, resolved or not).
    pub fn apply_outcome(&mut self, outcome: &Outcome) {
        match self
            .applied
            .iter_mut()
            .find(|a| a.decision_id == outcome.decision_id)
        {
            Some(applied) => applied.judged = true,
            None if !self.done.contains_key(&outcome.decision_id) => {
                self.judged_early
                    .insert(outcome.decision_id.clone(), outcome.ts_ms);
            }
            // Its result was folded but is gone or did not touch a node.
            None => {}
        }
    }

    /// Whether `decision_id` was already acted on (a result of any status was folded).
    pub fn has_result(&self, decision_id: &str) -> bool {
        self.done.contains_key(decision_id)
    }

    /// The nodes under action since `since_ms` (event time): an action applied after it (or
    /// after the decision judged, if the log is out of time order) whose outcome is not in
    /// yet, or a command out.
    fn under_action(&self, since_ms: i64) -> BTreeSet<&NodeId> {
        self.applied_since(since_ms)
            .filter(|a| !a.judged)
            .map(|a| &a.node)
            .chain(self.leases.keys())
            .collect()
    }

    fn applied_since(&self, since: i64) -> impl Iterator<Item = &Applied> {
        self.applied.iter().filter(move |a| a.ts_ms > since)
    }

    /// Forgets what no later decision can be refused by.
    fn prune(&mut self) {
        let Some(w) = self.watermark else { return };
        let radius = self
            .policies
            .values()
            .map(|p| p.file().blast_radius.window_ms())
            .max();
        let keep = self
            .config
            .cooldown_ms
            .max(self.config.rate_limit.window_ms)
            .max(radius.unwrap_or(0));
        let since = w.saturating_sub(keep);
        self.applied.retain(|a| a.ts_ms > since);
        self.last.retain(|_, (ts, _)| *ts > since);
        let remember = w.saturating_sub(keep.max(REMEMBER_MS));
        self.done.retain(|_, ts| *ts > remember);
        self.judged_early.retain(|_, ts| *ts > remember);
    }
}
