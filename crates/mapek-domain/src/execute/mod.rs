//! The execute phase's pure logic: the interlocks a decision passes before its action reaches
//! a node, and evaluate-after-act, which judges whether an applied action resolved its
//! incident.
//!
//! [`Interlocks::handle`] takes one [`Decision`] and says what to do with it ([`Verdict`]):
//! send the command, record a result without sending anything (refused, dry run,
//! escalation), or wait for approval. The worker sends the command and records the reply with
//! [`applied`] or [`failed`]; every result is folded back with [`Interlocks::apply`], which is
//! also how a restarted executor rebuilds its state from the results in the log.
//!
//! Nothing here reads a clock: a result's `ts_ms` is its decision's event time, so cooldowns,
//! rate limits and the evaluation window are all measured in the mesh's time, and a replay of
//! the log gives the same verdicts. `docs/execute.md` is the operator's manual.
//!
//! # Layout
//! - [`config`]: [`ExecuteConfig`], the interlocks' limits and the worker's command settings.
//! - [`interlocks`]: [`Interlocks`], the fold of results, and [`Interlocks::check`], the
//!   interlocks in their fixed order, with the [`Refusal`] of the first that fails.
//! - [`evaluate`]: [`Evaluator`], results and symptoms in, [`Outcome`](crate::Outcome)s out.

pub mod config;
pub mod evaluate;
pub mod interlocks;

#[cfg(test)]
mod tests;

pub use config::{Approval, ExecuteConfig, RateLimit};
pub use evaluate::Evaluator;
pub use interlocks::{CommandOut, Interlock, Interlocks, Refusal};

use crate::{ActionKind, ActionResult, ActionStatus, Decision, EventId};

/// What to do with a decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every interlock passed: take the lease ([`Interlocks::begin`]), send the command,
    /// and record the reply with [`applied`] or [`failed`].
    Send,
    /// Nothing to send; record this result: a refusal, a dry run, or an escalation (boxed:
    /// a result is far larger than the other verdicts).
    Record(Box<ActionResult>),
    /// The action waits for a human's approval; record nothing yet and look again later.
    AwaitApproval(Refusal),
}

impl Interlocks {
    /// Decides what to do with `decision` ([`Interlocks::check`], then):
    /// - an escalation touches no node: it is recorded as applied at once, with no command;
    /// - a refusal by the lease, cooldown, rate limit or blast radius is recorded as refused,
    ///   with the reason, and escalated to a human unless the policy says otherwise
    ///   ([`Interlocks::escalate`]);
    /// - in dry-run mode an action that passed those is recorded as applied with
    ///   `dry_run = true`, and nothing is sent;
    /// - an action that needs approval and has none waits;
    /// - anything else is sent.
    pub fn handle(&self, decision: &Decision, approved: bool) -> Verdict {
        let dry_run = self.config().dry_run;
        if decision.action.kind == ActionKind::Escalate {
            let escalation = result(decision, ActionStatus::Applied, "", 0, dry_run);
            return Verdict::Record(Box::new(escalation));
        }
        match self.check(decision, approved) {
            Ok(()) => Verdict::Send,
            Err(r) if r.interlock == Interlock::DryRun => Verdict::Record(Box::new(result(
                decision,
                ActionStatus::Applied,
                "",
                0,
                true,
            ))),
            Err(r) if r.interlock == Interlock::Approval => Verdict::AwaitApproval(r),
            Err(r) => Verdict::Record(Box::new(self.escalate(
                result(decision, ActionStatus::Refused, &r.reason, 0, dry_run),
                decision,
            ))),
        }
    }
}

/// The result id of the action taken on `decision_id`: one result per decision, so a
/// retried or redelivered decision's result dedups.
pub fn result_id(decision_id: &str) -> String {
    EventId::builder("action_result").str(decision_id).finish()
}

/// The outcome id of the action taken on `decision_id`: one verdict per decision.
pub fn outcome_id(decision_id: &str) -> String {
    EventId::builder("outcome").str(decision_id).finish()
}

/// The result of a command the node agent applied after `attempts` requests.
pub fn applied(decision: &Decision, attempts: u32) -> ActionResult {
    result(decision, ActionStatus::Applied, "", attempts, false)
}

/// The result of a command the node agent failed, or never answered, after `attempts`
/// requests; `reason` is the agent's detail or what went wrong.
pub fn failed(decision: &Decision, reason: &str, attempts: u32) -> ActionResult {
    result(decision, ActionStatus::Failed, reason, attempts, false)
}

/// The refusal of a decision that waited `waited_ms` in the stream, more than `max_ms`.
pub fn stale(decision: &Decision, waited_ms: i64, max_ms: i64) -> ActionResult {
    let reason = format!(
        "stale: the decision waited {} in the stream, more than max_decision_wait_ms ({}); \
         not acting on old news",
        secs(waited_ms),
        secs(max_ms)
    );
    result(decision, ActionStatus::Refused, &reason, 0, false)
}

/// The refusal of a decision that fails the audit: unsigned, a signature that does not
/// verify, or a broken link to the decision before it (`why` says which).
pub fn unverified(decision: &Decision, why: &str) -> ActionResult {
    let reason = format!("audit: {why}; not acting on a decision that cannot be proven");
    result(decision, ActionStatus::Refused, &reason, 0, false)
}

/// A result for `decision`, timed at the decision's event time.
fn result(
    decision: &Decision,
    status: ActionStatus,
    reason: &str,
    attempts: u32,
    dry_run: bool,
) -> ActionResult {
    ActionResult {
        result_id: result_id(&decision.decision_id),
        decision_id: decision.decision_id.clone(),
        incident_id: decision.incident_id.clone(),
        node: decision.node.clone(),
        ts_ms: decision.ts_ms,
        action: decision.action.clone(),
        status,
        reason: reason.to_owned(),
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        dry_run,
        escalation: None,
        signature: Vec::new(),
    }
}

/// A duration in milliseconds as seconds for a sentence: `60 s`, `1.5 s`.
pub(crate) fn secs(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}
