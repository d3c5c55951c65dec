//! The policy file: which symptoms get which candidate actions, under which limits.
//!
//! A policy is TOML (`policies/default.toml` is the shipped one, `docs/policy.md` the manual).
//! It is parsed with unknown fields refused, so a misspelt limit is an error rather than a
//! limit silently not applied, then checked field by field; every error names the field.
//!
//! The policy's identity is the SHA-256 of the file's exact bytes ([`Policy::hash`]): a
//! decision records it, so a replay knows which policy, to the byte, made each decision, and a
//! comment edited in the file is a new policy too.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::id::hex;
use crate::{ActionKind, Symptom, SymptomKind};

/// The shipped policy, `policies/default.toml`, as text.
pub const DEFAULT_POLICY: &str = include_str!("../../../../policies/default.toml");

/// The rule name a decision records when no rule matched its symptom. It is not a valid rule
/// name, so it can never be mistaken for one.
pub const NO_RULE: &str = "(no rule)";

/// The most neighbours a policy may ask the knowledge for per symptom: each one is recorded
/// in the decision.
pub const MAX_NEIGHBOURS: usize = 64;

/// The longest cooldown or window, in seconds (one year): longer ones are surely a unit
/// mistake (milliseconds written as seconds).
pub const MAX_SECS: u64 = 366 * 24 * 3600;

/// A policy file as written, before its fields are checked. See `docs/policy.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// The policy's name, recorded in every decision so an operator sees which policy acted
    /// without looking up a hash. `[A-Za-z0-9_.-]{1,64}`.
    pub name: String,
    /// What the policy is for, for the people who review it; the planner ignores it.
    #[serde(default)]
    pub description: String,
    /// Limits on how much of the mesh may be under action at once: the guard against a bad
    /// detector or a bad rule acting on every node at the same time.
    pub blast_radius: BlastRadius,
    /// How past incidents are consulted to rank a rule's candidates.
    #[serde(default)]
    pub knowledge: KnowledgeSettings,
    /// The escalation taken when no rule matches or every candidate of a rule is skipped,
    /// unless the rule has its own.
    #[serde(default)]
    pub fallback: Fallback,
    /// The rules, tried in file order; the first that matches a symptom decides it.
    pub rules: Vec<Rule>,
}

/// How much of the mesh may be under action, by event time; escalations do not count, since
/// they do not touch a node. Where it is judged, and over which nodes, is [`Scope`]'s to say;
/// what it refuses is [`BlastRadius::refuses`] either way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlastRadius {
    /// Where the limits are judged: `mesh` (by the executor, over every node of the mesh) or
    /// `partition` (by each plan partition, over the nodes it has seen), the way of a policy
    /// that does not say, so that decisions recorded under it replay the same.
    #[serde(default)]
    pub scope: Scope,
    /// The window, in seconds of event time, over which actions are counted. A node is under
    /// action for at most this long after an action on it (`mesh`: from when it was applied
    /// until its outcome is in; `partition`: from its decision until its incident resolves),
    /// whichever is first.
    pub window_secs: u64,
    /// At most this percentage (0 to 100] of the known nodes may be under action at once,
    /// rounded down.
    #[serde(default)]
    pub max_node_percent: Option<f64>,
    /// The known nodes are those seen (`mesh`: every node with telemetry on the monitor
    /// streams; `partition`: those seen in the partition's symptoms), but never fewer than
    /// this, so that a loop that has seen three nodes does not take one of them for a third of
    /// the mesh. With `max_node_percent` it must allow at least one node.
    #[serde(default)]
    pub min_known_nodes: u32,
    /// At most this many node actions within the window, over all nodes (`mesh`: applied or
    /// with their command out; `partition`: decided by the partition).
    #[serde(default)]
    pub max_actions: Option<u32>,
}

/// Where the blast radius is judged. The planner cannot judge the whole mesh: each plan
/// partition decides from its own symptoms, so that its decisions are a pure function of
/// them. The executor sees every decision acted on, whatever the number of partitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The executor judges each node action over the whole mesh when it acts on it; the
    /// planner chooses without the blast radius, and a refusal is recorded with the action.
    Mesh,
    /// Each plan partition judges the candidates over the nodes it has seen and skips those
    /// the blast radius refuses; with several partitions none of them sees the whole mesh.
    #[default]
    Partition,
}

/// What a node action would find: the counts the blast radius judges, made by the planner
/// (scope `partition`) or the executor (scope `mesh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// The nodes seen, before the policy's floor (`min_known_nodes`).
    pub seen: usize,
    /// The nodes under action if the action goes ahead, its own node included.
    pub nodes_after: usize,
    /// The node actions within the window before this one.
    pub actions: usize,
}

impl BlastRadius {
    /// The mesh's size for the blast radius: the nodes seen, but never fewer than
    /// `min_known_nodes`.
    pub fn known_nodes(&self, seen: usize) -> usize {
        seen.max(self.min_known_nodes as usize)
    }

    /// The window in milliseconds of event time.
    pub fn window_ms(&self) -> i64 {
        i64::try_from(self.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// Why the blast radius refuses a node action under `load`, if it does, in the words both
    /// the planner and the executor give.
    pub fn refuses(&self, load: Load) -> Option<String> {
        let known = self.known_nodes(load.seen);
        if let Some(percent) = self.max_node_percent {
            // percent * known / 100, rounded down: 10 % of 15 nodes is 1 node, not 2.
            let allowed = (percent * known as f64 / 100.0).floor() as usize;
            if load.nodes_after > allowed {
                return Some(format!(
                    "acting would put {} of {known} known nodes under action, more than \
                     {allowed} ({percent}%)",
                    load.nodes_after
                ));
            }
        }
        match self.max_actions {
            Some(max) if load.actions >= max as usize => Some(format!(
                "{} actions decided in the last {} s, the most allowed",
                load.actions, self.window_secs
            )),
            _ => None,
        }
    }
}

/// How past incidents rank a rule's candidates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeSettings {
    /// How many similar past incidents to ask for (0 to 64); 0 turns knowledge off, and
    /// every rule keeps its policy order.
    pub neighbours: usize,
    /// Past incidents less similar than this (scores are the knowledge store's, higher is
    /// closer) are ignored and not recorded, so a distant incident cannot reorder actions.
    pub min_score: f64,
}

impl Default for KnowledgeSettings {
    fn default() -> Self {
        Self {
            neighbours: 5,
            min_score: 0.0,
        }
    }
}

/// The escalation to a human: the one action that never touches a node, so it is never
/// refused by a cooldown or the blast radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Parameters passed with the escalation (`team`, `urgency`, …), for whatever pages a
    /// human. Keys are `[A-Za-z0-9_.-]{1,64}`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Whether an action the executor refuses (the blast radius, the rate limit, a cooldown,
    /// a node's lease, a stale or unproven decision) is escalated to a human with `params`,
    /// so that no incident ends with nothing done and nobody told. `false`: the refusal is
    /// only recorded.
    #[serde(default = "yes")]
    pub escalate_refusals: bool,
}

impl Default for Fallback {
    fn default() -> Self {
        Self {
            params: BTreeMap::new(),
            escalate_refusals: true,
        }
    }
}

/// One rule: which symptoms it matches, and what to try, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique in the policy; recorded in each decision it makes. `[A-Za-z0-9_.-]{1,64}`.
    pub name: String,
    /// The symptom kind it matches (`high_latency`, `packet_loss`, `node_silent`,
    /// `cpu_saturation`, `memory_saturation`, `link_flapping`).
    pub symptom: SymptomKind,
    /// It matches only symptoms at least this severe (1.0 = at the detector's threshold).
    /// A rule with a higher minimum placed before a milder one handles the bad cases apart.
    #[serde(default)]
    pub min_severity: Option<f64>,
    /// `true`: it matches only link-scoped symptoms, those that name a peer; `false`: only
    /// those that do not; absent: both. A rule with a `reroute` candidate must set `true`,
    /// since rerouting needs a peer to route around.
    #[serde(default)]
    pub has_peer: Option<bool>,
    /// Whether past incidents may reorder the candidates. `false` pins the policy order,
    /// for rules where the order is a safety choice (least invasive first) rather than a
    /// guess.
    #[serde(default = "yes")]
    pub rank_by_knowledge: bool,
    /// The actions to try, in order of preference. A candidate in cooldown for the node, or
    /// one the blast radius refuses, is skipped for the next.
    pub candidates: Vec<Candidate>,
    /// The escalation when every candidate is skipped; the policy's `[fallback]` if absent.
    #[serde(default)]
    pub fallback: Option<Fallback>,
}

fn yes() -> bool {
    true
}

/// One candidate action of a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// The action: `reroute`, `restart_service`, `quarantine`, `rate_limit` or `escalate`.
    pub action: ActionKind,
    /// After this action is decided for a node, the same action is not decided again for
    /// that node for this many seconds of event time (by any rule), so the loop does not
    /// restart a service every time a symptom updates. 0 means no cooldown.
    pub cooldown_secs: u64,
    /// The service to restart: required by `restart_service`, refused by the others.
    #[serde(default)]
    pub service: Option<String>,
    /// The rate to limit the node's traffic to, in packets per second: required by
    /// `rate_limit`, refused by the others. Passed to the node agent as param `rate_pps`.
    #[serde(default)]
    pub rate_pps: Option<u64>,
    /// Further parameters passed to the node agent as given. Keys are `[A-Za-z0-9_.-]{1,64}`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// Why a policy file was refused. The message names the field (or the line), so it can be
/// shown to a user as it is.
///
/// ### Handling
/// Never retried: the same file fails the same way. The CLI prints it and exits non-zero; a
/// plan worker refuses to start, and replay refuses the policy it was given.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// Not TOML, or not a policy: an unknown or missing field, or a value of the wrong type.
    #[error("policy file, {at}: {message}")]
    Syntax {
        /// Where: the line and the line's text.
        at: String,
        /// What is wrong, as the TOML parser says it (it names the field).
        message: String,
    },
    /// A field whose value the planner cannot use.
    #[error("policy field {field}: {why}")]
    Field {
        /// The field's path, as `rules[2].candidates[0].service` (counting from 0).
        field: String,
        /// The rule it breaks.
        why: String,
    },
}

/// A checked policy, the file it came from and its hash.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    file: PolicyFile,
    hash: String,
    /// The file's exact text: what the plan workers record for replay and the executor.
    text: std::sync::Arc<str>,
}

impl Policy {
    /// Parses and checks a policy file's text. The hash is over `text`'s exact bytes.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| syntax(text, &e))?;
        file.validate()?;
        Ok(Self {
            file,
            hash: hash(text.as_bytes()),
            text: text.into(),
        })
    }

    /// The shipped policy, [`DEFAULT_POLICY`].
    pub fn builtin() -> Self {
        match Self::parse(DEFAULT_POLICY) {
            Ok(p) => p,
            // A test parses it, so this is unreachable in a released build.
            Err(e) => panic!("policies/default.toml is invalid: {e}"),
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// SHA-256 of the policy file's bytes, 64 lowercase hex digits.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The file's exact text, whose SHA-256 is [`Policy::hash`].
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The checked file.
    pub fn file(&self) -> &PolicyFile {
        &self.file
    }

    /// The escalation of the rule named `rule`: its own `[rules.fallback]`, else the
    /// policy's `[fallback]` (also for a decision no rule made).
    pub fn fallback_for(&self, rule: &str) -> &Fallback {
        self.rule(rule)
            .and_then(|r| r.fallback.as_ref())
            .unwrap_or(&self.file.fallback)
    }

    /// The rule named `name`.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.file.rules.iter().find(|r| r.name == name)
    }

    /// The first rule, in file order, that matches `symptom`.
    pub fn matching(&self, symptom: &Symptom) -> Option<&Rule> {
        self.file.rules.iter().find(|r| r.matches(symptom))
    }
}

impl Default for Policy {
    /// The shipped policy, as [`Policy::builtin`].
    fn default() -> Self {
        Self::builtin()
    }
}

impl Rule {
    /// Whether the rule applies to `symptom`: its kind, its severity, its peer.
    pub fn matches(&self, symptom: &Symptom) -> bool {
        symptom.kind == self.symptom
            && self.min_severity.is_none_or(|min| symptom.severity >= min)
            && self
                .has_peer
                .is_none_or(|want| symptom.peer.is_some() == want)
    }

    /// The severity a symptom must reach for the rule to match, `-inf` when it has none.
    pub fn threshold(&self) -> f64 {
        self.min_severity.unwrap_or(f64::NEG_INFINITY)
    }
}

/// SHA-256 of `bytes`, hex.
pub fn hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn syntax(text: &str, e: &toml::de::Error) -> PolicyError {
    let at = match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count();
            let source = text.lines().nth(line).unwrap_or("").trim();
            format!("line {} (`{source}`)", line + 1)
        }
        None => "whole file".to_owned(),
    };
    PolicyError::Syntax {
        at,
        message: e.message().trim().to_owned(),
    }
}

impl PolicyFile {
    /// Checks every field; the first error found names its field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        name("name", &self.name)?;
        self.blast_radius.validate()?;
        self.knowledge.validate()?;
        params("fallback.params", &self.fallback.params)?;
        if self.rules.is_empty() {
            return Err(field(
                "rules",
                "a policy needs at least one [[rules]] entry",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(&format!("rules[{i}]"))?;
            if !names.insert(rule.name.as_str()) {
                let why = format!(
                    "rule name `{}` is used twice; names must be unique",
                    rule.name
                );
                return Err(field(format!("rules[{i}].name"), why));
            }
        }
        Ok(())
    }
}

impl BlastRadius {
    fn validate(&self) -> Result<(), PolicyError> {
        secs("blast_radius.window_secs", self.window_secs, 1)?;
        if let Some(p) = self.max_node_percent
            && !(p.is_finite() && p > 0.0 && p <= 100.0)
        {
            let why = format!("is {p}, but must be above 0 and at most 100");
            return Err(field("blast_radius.max_node_percent", why));
        }
        if let Some(p) = self.max_node_percent
            && (p * f64::from(self.min_known_nodes) / 100.0) < 1.0
        {
            let why = format!(
                "is {}, and {p}% of it is under one node, so nothing could act until more \
                 nodes are seen; set it to the mesh's size (at least {})",
                self.min_known_nodes,
                (100.0 / p).ceil()
            );
            return Err(field("blast_radius.min_known_nodes", why));
        }
        if self.max_actions == Some(0) {
            let why = "is 0, which would refuse every action; use escalate-only rules instead";
            return Err(field("blast_radius.max_actions", why));
        }
        if self.max_node_percent.is_none() && self.max_actions.is_none() {
            let why = "set max_node_percent, max_actions or both: a policy without a limit \
                       could act on every node at once";
            return Err(field("blast_radius", why));
        }
        Ok(())
    }
}

impl KnowledgeSettings {
    fn validate(&self) -> Result<(), PolicyError> {
        if self.neighbours > MAX_NEIGHBOURS {
            let why = format!(
                "is {}, but must be at most {MAX_NEIGHBOURS}",
                self.neighbours
            );
            return Err(field("knowledge.neighbours", why));
        }
        if !self.min_score.is_finite() {
            return Err(field("knowledge.min_score", "must be a finite number"));
        }
        Ok(())
    }
}

impl Rule {
    fn validate(&self, at: &str) -> Result<(), PolicyError> {
        name(&format!("{at}.name"), &self.name)?;
        let rule = &self.name;
        if let Some(min) = self.min_severity
            && !(min.is_finite() && min >= 0.0)
        {
            let why = format!("is {min}, but must be a number at least 0");
            return Err(field(format!("{at}.min_severity"), why));
        }
        if self.candidates.is_empty() {
            let why = format!("rule `{rule}` needs at least one candidate");
            return Err(field(format!("{at}.candidates"), why));
        }
        let mut seen = BTreeSet::new();
        for (j, c) in self.candidates.iter().enumerate() {
            let at = format!("{at}.candidates[{j}]");
            c.validate(&at, rule)?;
            if !seen.insert(c.action) {
                let why = format!(
                    "rule `{rule}` lists {} twice; cooldowns and knowledge are per action, so \
                     the second could never be chosen",
                    c.action.as_str()
                );
                return Err(field(format!("{at}.action"), why));
            }
            if c.action == ActionKind::Reroute && self.has_peer != Some(true) {
                let why = format!(
                    "rule `{rule}` offers reroute, which needs the symptom's peer; set \
                     has_peer = true on the rule"
                );
                return Err(field(format!("{at}.action"), why));
            }
        }
        if let Some(f) = &self.fallback {
            params(&format!("{at}.fallback.params"), &f.params)?;
        }
        Ok(())
    }
}

impl Candidate {
    fn validate(&self, at: &str, rule: &str) -> Result<(), PolicyError> {
        let action = self.action.as_str();
        secs(&format!("{at}.cooldown_secs"), self.cooldown_secs, 0)?;
        match (&self.service, self.action) {
            (None, ActionKind::RestartService) => {
                let why = format!("rule `{rule}`: restart_service needs the service to restart");
                return Err(field(format!("{at}.service"), why));
            }
            (Some(s), ActionKind::RestartService) => name(&format!("{at}.service"), s)?,
            (Some(_), _) => {
                let why =
                    format!("rule `{rule}`: only restart_service takes a service, not {action}");
                return Err(field(format!("{at}.service"), why));
            }
            (None, _) => {}
        }
        match (self.rate_pps, self.action) {
            (None, ActionKind::RateLimit) => {
                let why =
                    format!("rule `{rule}`: rate_limit needs the rate, in packets per second");
                return Err(field(format!("{at}.rate_pps"), why));
            }
            (Some(0), ActionKind::RateLimit) => {
                let why = format!("rule `{rule}`: a rate of 0 cuts the node off; use quarantine");
                return Err(field(format!("{at}.rate_pps"), why));
            }
            (Some(_), ActionKind::RateLimit) | (None, _) => {}
            (Some(_), _) => {
                let why = format!("rule `{rule}`: only rate_limit takes a rate, not {action}");
                return Err(field(format!("{at}.rate_pps"), why));
            }
        }
        params(&format!("{at}.params"), &self.params)?;
        if self.params.contains_key(RATE_PARAM) {
            let why = format!("`{RATE_PARAM}` is set by the rate_pps field; set it there");
            return Err(field(format!("{at}.params.{RATE_PARAM}"), why));
        }
        Ok(())
    }
}

/// The action parameter that carries [`Candidate::rate_pps`].
pub const RATE_PARAM: &str = "rate_pps";

fn field(field: impl Into<String>, why: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field: field.into(),
        why: why.into(),
    }
}

fn name(at: &str, value: &str) -> Result<(), PolicyError> {
    // The same rule as names in events: a policy's names end up in decisions.
    crate::event::name("name", value).map_err(|_| {
        let why = format!("{value:?} must be 1 to 64 letters, digits, '_', '.' or '-'");
        field(at, why)
    })
}

fn params(at: &str, params: &BTreeMap<String, String>) -> Result<(), PolicyError> {
    for key in params.keys() {
        name(&format!("{at}.{key}"), key)?;
    }
    Ok(())
}

fn secs(at: &str, value: u64, min: u64) -> Result<(), PolicyError> {
    if (min..=MAX_SECS).contains(&value) {
        Ok(())
    } else {
        let why = format!("is {value}, but must be between {min} and {MAX_SECS} seconds");
        Err(field(at, why))
    }
}
