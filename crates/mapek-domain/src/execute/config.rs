//! The executor's configuration: its interlocks, the evaluation window and how commands are
//! sent.
//!
//! Every field has a default, and unknown fields are refused, so a misspelt limit is an error
//! rather than a limit silently not applied. Times are milliseconds of *event time* (the
//! decisions' and symptoms' `ts_ms`), except the two command settings, which are wall-clock
//! durations for the worker's requests to node agents.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{ActionKind, Invalid};

/// How the executor acts on decisions. See `docs/execute.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecuteConfig {
    /// Record what would be done without sending anything to a node: every decision that
    /// passes the other interlocks is recorded as applied with `dry_run = true`. A shadow
    /// executor, to try a policy on a live mesh without touching it.
    pub dry_run: bool,
    /// Which actions wait for a human's approval (`mapek approve <decision>`) before they
    /// are sent: `false` (none, the default), `true` (all), or a list of action kinds
    /// (`["quarantine"]`). Escalations never wait: they touch no node.
    pub require_approval: Approval,
    /// A node that had an action applied less than this long ago (event time) is refused
    /// another: an action needs time to show its effect before the next one piles on.
    pub cooldown_ms: i64,
    /// At most this many actions applied per window, over all nodes: the guard against a
    /// storm of decisions from a bad detector or a bad rule.
    pub rate_limit: RateLimit,
    /// How long after an action was applied (event time) its incident must resolve for the
    /// action to count as having resolved it. (How long an action counts as under way for the
    /// blast radius is the policy's `blast_radius.window_secs`.)
    pub evaluate_window_ms: i64,
    /// How long the worker waits for a node agent's reply to one command, in milliseconds.
    pub command_timeout_ms: u64,
    /// How many times the worker sends a command before it records the action as failed
    /// (at least 1). Only a missing reply is retried: an agent that answers "failed" has
    /// decided, and asking again would not change its mind.
    pub command_attempts: u32,
    /// How long a decision waiting for approval waits before it is looked at again, in
    /// milliseconds.
    pub approval_poll_ms: u64,
    /// The longest a decision may have waited in the stream (from the moment the server
    /// stored it, by the server's and the executor's clocks) and still be acted on, in
    /// milliseconds; 0: no limit. An executor that comes back after an outage refuses the
    /// decisions it missed instead of acting on old news. Approved decisions are exempt: a
    /// human looked at them.
    pub max_decision_wait_ms: u64,
}

impl Default for ExecuteConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            require_approval: Approval::default(),
            cooldown_ms: 60_000,
            rate_limit: RateLimit::default(),
            evaluate_window_ms: 60_000,
            command_timeout_ms: 2_000,
            command_attempts: 3,
            approval_poll_ms: 1_000,
            max_decision_wait_ms: 300_000,
        }
    }
}

impl ExecuteConfig {
    /// Checks the ranges serde cannot: times not negative, at least
    /// one attempt. The error names the field.
    pub fn check(&self) -> Result<(), Invalid> {
        let out = |field: &str, value: f64, range: &'static str| Invalid::OutOfRange {
            field: field.to_owned(),
            value,
            range,
        };
        for (field, value) in [
            ("cooldown_ms", self.cooldown_ms),
            ("evaluate_window_ms", self.evaluate_window_ms),
            ("rate_limit.window_ms", self.rate_limit.window_ms),
        ] {
            if value < 0 {
                return Err(out(field, value as f64, "at least 0"));
            }
        }
        if self.command_attempts == 0 {
            return Err(out("command_attempts", 0.0, "at least 1"));
        }
        if self.command_timeout_ms == 0 {
            return Err(out("command_timeout_ms", 0.0, "at least 1"));
        }
        Ok(())
    }
}

/// The global rate limit: `max_actions` per `window_ms` of event time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// At most this many actions applied within the window, over all nodes.
    pub max_actions: u32,
    /// The window, in milliseconds of event time.
    pub window_ms: i64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            max_actions: 10,
            window_ms: 60_000,
        }
    }
}

/// Which actions need a human's approval: all or none (`true`/`false`), or some kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Approval {
    /// Every action (`true`) or none (`false`).
    All(bool),
    /// These kinds of action.
    Kinds(BTreeSet<ActionKind>),
}

impl Default for Approval {
    fn default() -> Self {
        Approval::All(false)
    }
}

impl Approval {
    /// Whether an action of `kind` needs approval. An escalation never does.
    pub fn required_for(&self, kind: ActionKind) -> bool {
        if kind == ActionKind::Escalate {
            return false;
        }
        match self {
            Approval::All(all) => *all,
            Approval::Kinds(kinds) => kinds.contains(&kind),
        }
    }
}
