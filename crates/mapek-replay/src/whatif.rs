//! `replay what-if`: the recorded symptoms through another policy, and how its decisions
//! differ from the recorded ones.
//!
//! Each partition's recorded symptoms go, in stream order, through a planner with the
//! candidate policy, consulting `knowledge`; the [`KnowledgeView`] contract makes it answer
//! only with what was known before each symptom's time, so the past is not judged with
//! knowledge from its future.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use mapek_domain::plan::RecordedKnowledge;
use mapek_domain::{
    Action, AnalyzeConfig, Decision, KnowledgeView, NodeId, Planner, Policy, Symptom,
};
use serde::Serialize;

use crate::log::{Log, Stored, UNPARTITIONED};
use crate::range::format_ms;
use crate::verify::analyze_again;
use crate::{Range, ReplayError, Source};

/// Same, changed, added or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The same action.
    Same,
    /// Another action (or target, or parameters).
    Changed,
    /// Decided under the candidate only.
    Added,
    /// Decided under the recorded policy only.
    Removed,
}

/// Counts of each change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Same action.
    pub same: u64,
    /// Another action.
    pub changed: u64,
    /// Decided only under the candidate.
    pub added: u64,
    /// Decided only under the recorded policy.
    pub removed: u64,
}

impl Change {
    /// How `other` compares with `recorded`, the decisions on one symptom under two
    /// policies; `None` if neither decided.
    pub(crate) fn between(recorded: Option<&Decision>, other: Option<&Decision>) -> Option<Self> {
        Some(match (recorded, other) {
            (None, None) => return None,
            (Some(r), Some(d)) if r.action == d.action => Change::Same,
            (Some(_), Some(_)) => Change::Changed,
            (None, Some(_)) => Change::Added,
            (Some(_), None) => Change::Removed,
        })
    }
}

impl Counts {
    pub(crate) fn add(&mut self, c: Change) {
        match c {
            Change::Same => self.same += 1,
            Change::Changed => self.changed += 1,
            Change::Added => self.added += 1,
            Change::Removed => self.removed += 1,
        }
    }
}

/// A decision, shortly.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Brief {
    /// The action (`reroute n1`, `restart_service agent`).
    pub action: String,
    /// The rule behind it.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// The past incidents it consulted.
    pub knowledge: Vec<String>,
}

impl Brief {
    pub(crate) fn of(d: &Decision) -> Self {
        Self {
            action: describe(&d.action),
            rule: d.rule.clone(),
            reason: d.reason.clone(),
            knowledge: d.knowledge.iter().map(|n| n.incident_id.clone()).collect(),
        }
    }
}

/// What a what-if runs the recorded log through.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The policy to decide with.
    pub policy: &'a Policy,
    /// Analyze settings to find the symptoms again with, from the recorded telemetry; the
    /// recorded symptoms when `None`.
    pub analyze: Option<&'a AnalyzeConfig>,
    /// What the planner consults.
    pub consult: Consult,
}

/// What the candidate's planner consults for a symptom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consult {
    /// The neighbours the recorded decision consulted, when there is one (what the live
    /// planner knew then); the knowledge view for the symptoms not decided on.
    #[default]
    Recorded,
    /// The knowledge view for every symptom, as of the symptom's time: the index as it
    /// stands now, without the projection's lag the live planner had.
    Index,
}

/// An action in a few words: `reroute n1`, `restart_service agent`, `rate_limit`.
pub fn describe(a: &Action) -> String {
    let mut s = a.kind.as_str().to_owned();
    for x in a
        .peer
        .iter()
        .map(|p| p.as_str())
        .chain(a.service.as_deref())
    {
        s.push(' ');
        s.push_str(x);
    }
    s
}

/// One symptom decided on under either policy, and how its decisions compare.
#[derive(Clone, Debug, Serialize)]
pub struct Compared {
    /// What changed.
    pub change: Change,
    /// The symptom.
    pub symptom_id: String,
    /// Its kind.
    pub kind: String,
    /// Its node.
    pub node: String,
    /// Its event time.
    pub ts_ms: i64,
    /// The recorded decision.
    pub recorded: Option<Brief>,
    /// The candidate's decision.
    pub what_if: Option<Brief>,
}

/// What `replay what-if` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WhatIfReport {
    /// The candidate policy's name.
    pub policy: String,
    /// Its hash.
    pub policy_hash: String,
    /// The range compared.
    pub range: Range,
    /// Whether the symptoms were found again with candidate analyze settings (else they are
    /// the recorded ones).
    pub reanalyzed: bool,
    /// Symptoms decided on (in the range).
    pub symptoms: u64,
    /// All changes.
    pub total: Counts,
    /// Decisions per action: `[recorded, what-if]`.
    pub per_action: BTreeMap<String, [u64; 2]>,
    /// Changes per symptom kind.
    pub per_kind: BTreeMap<String, Counts>,
    /// Every symptom decided on under either policy, in stream order, `same` included.
    pub decisions: Vec<Compared>,
}

impl WhatIfReport {
    /// Whether the candidate decides exactly as recorded (actions, targets, parameters).
    pub fn unchanged(&self) -> bool {
        self.total.changed + self.total.added + self.total.removed == 0
    }
}

/// Runs `range` of `source`'s recorded symptoms (or those the candidate's analyze settings
/// find in the recorded telemetry) through the candidate's policy, consulting `knowledge`,
/// and compares with the recorded decisions, symptom by symptom.
pub async fn what_if(
    source: &Source,
    range: Range,
    node: Option<&NodeId>,
    candidate: &Candidate<'_>,
    knowledge: &dyn KnowledgeView,
) -> Result<WhatIfReport, ReplayError> {
    let log = Log::load(source).await?;
    let again = match candidate.analyze {
        Some(config) => Some(found_again(source, config, &log).await?),
        None => None,
    };
    let mut report = compare(
        &log,
        again.as_deref().unwrap_or(&log.symptoms),
        range,
        node,
        candidate.policy,
        knowledge,
        candidate.consult,
    );
    report.reanalyzed = candidate.analyze.is_some();
    Ok(report)
}

/// The symptoms analyze with `config` finds in the recorded telemetry, each in the plan
/// partition the live loop would have put it in: its telemetry's, when the recorded symptoms
/// are partitioned. The same reading gives the same symptom id, so a symptom found at the same
/// moment compares with its recorded decision; one found at another moment is another symptom.
async fn found_again(
    source: &Source,
    config: &AnalyzeConfig,
    log: &Log,
) -> Result<Vec<Stored<Symptom>>, ReplayError> {
    let partitioned = log.symptoms.iter().all(|s| s.partition != UNPARTITIONED);
    let again = analyze_again(source, config, &mut |_| {}).await?;
    Ok(again
        .symptoms
        .into_iter()
        .map(|(partition, event)| Stored {
            partition: if partitioned {
                partition
            } else {
                UNPARTITIONED
            },
            seq: 0,
            bytes: Default::default(),
            event,
        })
        .collect())
}

/// Decides on each of `symptoms` under `policy` and compares with the recorded decisions
/// of `log`; a recorded decision on a symptom not among them (analyze settings that no
/// longer find it) is removed.
fn compare(
    log: &Log,
    symptoms: &[Stored<Symptom>],
    range: Range,
    node: Option<&NodeId>,
    policy: &Policy,
    knowledge: &dyn KnowledgeView,
    consult: Consult,
) -> WhatIfReport {
    let mut report = WhatIfReport {
        policy: policy.name().to_owned(),
        policy_hash: policy.hash().to_owned(),
        range,
        ..Default::default()
    };
    let wanted = |e: &Symptom| range.contains(e.ts_ms) && node.is_none_or(|n| n == &e.node);
    let mut planners: BTreeMap<u32, Planner> = BTreeMap::new();
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for s in symptoms {
        let e = &s.event;
        let planner = planners
            .entry(s.partition)
            .or_insert_with(|| Planner::new(policy.clone()));
        // What the live planner knew about this symptom is what its recorded decision
        // consulted: the index as the projection had filled it then. Asking the index again,
        // even restricted to before the symptom, would answer from a different moment (the
        // projection's lag) and report changes no policy made. Symptoms the live run did not
        // decide on consult `knowledge`.
        let recorded_knowledge = log
            .decisions_on(&e.symptom_id)
            .first()
            .filter(|_| consult == Consult::Recorded)
            .map(|d| RecordedKnowledge::from_decision(&d.event));
        let decided = match &recorded_knowledge {
            Some(k) => planner.decide(e, k),
            None => planner.decide(e, knowledge),
        };
        if seen.insert(e.symptom_id.as_str(), ()).is_none() && wanted(e) {
            report.symptoms += 1;
            let recorded = log.decisions_on(&e.symptom_id).first().map(|d| &d.event);
            report.add(e, recorded, decided.as_ref());
        }
    }
    for s in &log.symptoms {
        let e = &s.event;
        if seen.insert(e.symptom_id.as_str(), ()).is_none() && wanted(e) {
            let recorded = log.decisions_on(&e.symptom_id).first().map(|d| &d.event);
            report.add(e, recorded, None);
        }
    }
    report
}

impl WhatIfReport {
    /// Counts and lists how the decisions on symptom `e` compare, if either policy decided.
    fn add(&mut self, e: &Symptom, recorded: Option<&Decision>, decided: Option<&Decision>) {
        let Some(change) = Change::between(recorded, decided) else {
            return;
        };
        for (i, d) in [recorded, decided].into_iter().enumerate() {
            if let Some(d) = d {
                self.per_action
                    .entry(d.action.kind.as_str().into())
                    .or_default()[i] += 1;
            }
        }
        self.total.add(change);
        self.per_kind
            .entry(e.kind.as_str().into())
            .or_default()
            .add(change);
        self.decisions.push(Compared {
            change,
            symptom_id: e.symptom_id.clone(),
            kind: e.kind.as_str().into(),
            node: e.node.to_string(),
            ts_ms: e.ts_ms,
            recorded: recorded.map(Brief::of),
            what_if: decided.map(Brief::of),
        });
    }
}

impl fmt::Display for WhatIfReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.total;
        writeln!(
            f,
            "what-if policy {} ({}): {} symptoms decided on{}",
            self.policy,
            &self.policy_hash[..self.policy_hash.len().min(12)],
            self.symptoms,
            if self.reanalyzed {
                ", found again in the telemetry with the candidate analyze settings"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "decisions: {} same, {} changed, {} added, {} removed",
            t.same, t.changed, t.added, t.removed
        )?;
        writeln!(f, "per action (recorded -> what-if):")?;
        for (action, [r, w]) in &self.per_action {
            writeln!(f, "  {action:<16} {r:>6} -> {w}")?;
        }
        writeln!(f, "per symptom kind (same/changed/added/removed):")?;
        for (kind, c) in &self.per_kind {
            writeln!(
                f,
                "  {kind:<18} {}/{}/{}/{}",
                c.same, c.changed, c.added, c.removed
            )?;
        }
        // Every change, grouped by kind of change, each group in stream order.
        let mut changes: Vec<&Compared> = self
            .decisions
            .iter()
            .filter(|x| x.change != Change::Same)
            .collect();
        changes.sort_by_key(|x| x.change);
        for x in changes {
            let b = |b: &Option<Brief>| match b {
                Some(b) => format!("{} (rule `{}`)", b.action, b.rule),
                None => "nothing".to_owned(),
            };
            writeln!(
                f,
                "{:?}: {} {} at {}: recorded {}; what-if {}",
                x.change,
                x.kind,
                x.node,
                format_ms(x.ts_ms),
                b(&x.recorded),
                b(&x.what_if)
            )?;
            if let Some(w) = &x.what_if {
                writeln!(f, "    why: {}", w.reason)?;
            }
        }
        if self.unchanged() {
            writeln!(f, "verdict: no change")
        } else {
            writeln!(
                f,
                "verdict: {} decisions would change",
                t.changed + t.added + t.removed
            )
        }
    }
}
