//! Given / when / then for the execute phase.
//!
//! Interlocks: `given(config, history)` folds earlier results into fresh [`Interlocks`];
//! `.when(decision)` (or `.when_approved`) asks what to do with a decision; `.then_send()`,
//! `.then_record(|result| …)`, `.then_refused(interlock, reason)` and `.then_wait()` check the
//! verdict. The evaluator has its own harness in `evaluate.rs`. Every event made anywhere
//! must pass its schema's own validation.

mod config;
mod evaluate;
mod interlocks;

use std::collections::BTreeMap;

use super::{CommandOut, ExecuteConfig, Interlock, Interlocks, Verdict, applied, failed};
use crate::plan::{BlastRadius, Policy, Scope};
use crate::{Action, ActionKind, ActionResult, ActionStatus, Decision, Event, NodeId};

/// Far from any wall clock (2001-09-09), so a test that passes cannot lean on one.
pub(super) const T0: i64 = 1_000_000_000_000;

/// A node id.
pub(super) fn id(node: &str) -> NodeId {
    NodeId::new(node).unwrap()
}

/// A decision to take `kind` on `node`, `secs` seconds after [`T0`], named `name`.
pub(super) fn decision(name: &str, node: &str, kind: ActionKind, secs: f64) -> Decision {
    Decision {
        decision_id: format!("d-{name}"),
        symptom_id: format!("s-{name}"),
        incident_id: format!("i-{node}"),
        node: id(node),
        ts_ms: T0 + (secs * 1000.0) as i64,
        action: Action {
            kind,
            peer: None,
            service: (kind == ActionKind::RestartService).then(|| "routing".to_owned()),
            params: BTreeMap::new(),
        },
        rule: "test-rule".into(),
        reason: "a test".into(),
        policy_name: "test".into(),
        policy_hash: policy_hash(),
        knowledge: Vec::new(),
        prev_hash: String::new(),
        signature: Vec::new(),
    }
}

/// The result of `kind` applied on `node` at `secs`.
pub(super) fn done(name: &str, node: &str, kind: ActionKind, secs: f64) -> ActionResult {
    applied(&decision(name, node, kind, secs), 1)
}

/// The result of `kind` failed on `node` at `secs`.
pub(super) fn failed_at(name: &str, node: &str, kind: ActionKind, secs: f64) -> ActionResult {
    failed(&decision(name, node, kind, secs), "agent said no", 1)
}

/// Interlocks and the verdict on the latest decision.
pub(super) struct Scenario {
    pub(super) interlocks: Interlocks,
    /// The hash of the scenario's policy, which decisions naming [`policy_hash`] are given.
    policy: String,
    verdict: Option<Verdict>,
}

/// The policy hash test decisions name: the scenario's policy, whatever its hash.
pub(super) fn policy_hash() -> String {
    "ab".repeat(32)
}

/// A policy with `blast_radius`, an escalation to netops for refusals (`escalate_refusals`)
/// and one rule, `test-rule`, that decides what test decisions name.
pub(super) fn policy(blast_radius: &BlastRadius, escalate_refusals: bool) -> Policy {
    let scope = match blast_radius.scope {
        Scope::Mesh => "mesh",
        Scope::Partition => "partition",
    };
    let mut limits = format!(
        "scope = \"{scope}\"\nwindow_secs = {}\nmin_known_nodes = {}\n",
        blast_radius.window_secs, blast_radius.min_known_nodes
    );
    if let Some(p) = blast_radius.max_node_percent {
        limits.push_str(&format!("max_node_percent = {p:?}\n"));
    }
    if let Some(n) = blast_radius.max_actions {
        limits.push_str(&format!("max_actions = {n}\n"));
    }
    let text = format!(
        "name = \"test\"\n[blast_radius]\n{limits}[fallback]\nparams = {{ team = \"netops\" }}\n\
         escalate_refusals = {escalate_refusals}\n[[rules]]\nname = \"test-rule\"\n\
         symptom = \"cpu_saturation\"\n[[rules.candidates]]\naction = \"escalate\"\n\
         cooldown_secs = 0\n"
    );
    Policy::parse(&text).expect("a valid test policy")
}

/// A blast radius judged over the mesh: at most `percent` % of the nodes under action within
/// a minute, the mesh counted at least `floor` nodes.
pub(super) fn radius(percent: f64, floor: u32) -> BlastRadius {
    BlastRadius {
        scope: Scope::Mesh,
        window_secs: 60,
        max_node_percent: Some(percent),
        min_known_nodes: floor,
        max_actions: None,
    }
}

/// Interlocks with `config` that folded `history`, under a policy whose blast radius lets
/// every node act.
pub(super) fn given(config: ExecuteConfig, history: Vec<ActionResult>) -> Scenario {
    given_under(config, radius(100.0, 1000), history)
}

/// Interlocks with `config` that folded `history`, under a policy with `blast_radius`.
pub(super) fn given_under(
    config: ExecuteConfig,
    blast_radius: BlastRadius,
    history: Vec<ActionResult>,
) -> Scenario {
    given_policy(config, policy(&blast_radius, true), history)
}

/// Interlocks with `config` that folded `history`, under `policy`.
pub(super) fn given_policy(
    config: ExecuteConfig,
    policy: Policy,
    history: Vec<ActionResult>,
) -> Scenario {
    let mut interlocks = Interlocks::new(config);
    let hash = policy.hash().to_owned();
    interlocks.learn_policy(policy);
    for r in &history {
        r.validate().expect("test results are valid");
        interlocks.apply(r);
    }
    Scenario {
        interlocks,
        policy: hash,
        verdict: None,
    }
}

impl Scenario {
    /// Asks about `d`, not approved.
    pub(super) fn when(self, d: &Decision) -> Self {
        self.ask(d, false)
    }

    /// Asks about `d`, approved by a human.
    pub(super) fn when_approved(self, d: &Decision) -> Self {
        self.ask(d, true)
    }

    fn ask(mut self, d: &Decision, approved: bool) -> Self {
        let mut d = d.clone();
        if d.policy_hash == policy_hash() {
            d.policy_hash = self.policy.clone();
        }
        let d = &d;
        let verdict = self.interlocks.handle(d, approved);
        if let Verdict::Record(r) = &verdict {
            r.validate()
                .expect("every result passes its schema's checks");
            assert_eq!(r.result_id, super::result_id(&d.decision_id));
        }
        self.verdict = Some(verdict);
        self
    }

    /// Folds `r`, as the worker does with every result it records.
    pub(super) fn and_then(mut self, r: &ActionResult) -> Self {
        self.interlocks.apply(r);
        self
    }

    fn verdict(&self) -> &Verdict {
        self.verdict.as_ref().expect("call when() first")
    }

    /// Expects the command to be sent.
    pub(super) fn then_send(self) -> Self {
        assert_eq!(self.verdict(), &Verdict::Send);
        self
    }

    /// Expects a result recorded without a command, and checks it.
    pub(super) fn then_record(self, check: impl FnOnce(&ActionResult)) -> Self {
        match self.verdict() {
            Verdict::Record(r) => check(r),
            other => panic!("expected a result to record, got {other:?}"),
        }
        self
    }

    /// Expects a refusal by `interlock`, recorded with exactly `reason`.
    pub(super) fn then_refused(self, interlock: Interlock, reason: &str) -> Self {
        match self.verdict() {
            Verdict::Record(r) => {
                assert_eq!(r.status, ActionStatus::Refused, "{r:#?}");
                assert_eq!(r.reason, reason);
                assert_eq!(r.attempts, 0);
                assert!(r.reason.starts_with(interlock.as_str()), "{}", r.reason);
            }
            other => panic!("expected a refusal by {interlock:?}, got {other:?}"),
        }
        self
    }

    /// Expects the decision to wait for approval.
    pub(super) fn then_wait(self) -> Self {
        match self.verdict() {
            Verdict::AwaitApproval(r) => assert_eq!(r.interlock, Interlock::Approval),
            other => panic!("expected to wait for approval, got {other:?}"),
        }
        self
    }
}
