//! `shadow diff`: how the decisions candidate policies took on the live symptoms (the shadow
//! decisions of `mapek run --shadow-policy`, ADR 0020) compare with the live policy's.
//!
//! Each symptom decided on under either policy is paired by its id: the same action, another
//! one, or a decision under one policy only. A shadow decision that the executor would have
//! refused is marked so: the candidate's decisions go, in event time, through the
//! executor's own interlocks ([`Interlocks`]) with the executor's settings, the candidate's
//! blast radius and the mesh's size, as if the candidate were live: each action it would have
//! sent is taken as applied, and stays under action until the live outcome of its incident
//! is in (or the policy's window passes), as the live action's did.
//!
//! A candidate's planners may not have reached the newest symptoms yet: a symptom past what
//! its consumer has acknowledged is left out of the comparison (and counted as still to
//! decide), so a shadow that is catching up is not reported as deciding nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use mapek_bus::JetStream;
use mapek_domain::execute::{Verdict, applied};
use mapek_domain::{
    ActionResult, Decision, ExecuteConfig, Interlocks, NodeId, Outcome, Phase, Policy,
    ShadowDecision, Symptom,
};
use serde::Serialize;

use crate::log::{Log, Stored};
use crate::range::format_ms;
use crate::whatif::{Brief, Change, Counts};
use crate::{Range, ReplayError, Source};

/// What to compare.
#[derive(Clone, Debug, Default)]
pub struct ShadowOptions {
    /// The symptoms' event time to compare over.
    pub range: Range,
    /// Only this node's symptoms.
    pub node: Option<NodeId>,
    /// Only the candidate of this name; every candidate found when `None`.
    pub policy: Option<String>,
    /// The executor's settings the candidate's decisions are judged by.
    pub execute: ExecuteConfig,
    /// How many nodes the mesh has, for the blast radius (the policy's floor applies).
    pub mesh_nodes: usize,
}

/// One symptom decided on under either policy.
#[derive(Clone, Debug, Serialize)]
pub struct ShadowCompared {
    /// Same, changed, added (the candidate only) or removed (the live policy only).
    pub change: Change,
    /// The symptom.
    pub symptom_id: String,
    /// Its kind.
    pub kind: String,
    /// Its node.
    pub node: String,
    /// Its event time.
    pub ts_ms: i64,
    /// The live decision.
    pub live: Option<Brief>,
    /// What the executor did with it: `applied`, `refused: …; escalated to a human`, …
    pub live_result: Option<String>,
    /// The candidate's decision.
    pub shadow: Option<Brief>,
    /// Why the executor would have refused the candidate's decision, if it would have.
    pub would_be_refused: Option<String>,
}

/// How one candidate policy's decisions compare with the live ones.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShadowReport {
    /// The candidate's name.
    pub policy: String,
    /// Its hash.
    pub policy_hash: String,
    /// The event time compared.
    pub range: Range,
    /// Symptoms decided on under either policy.
    pub symptoms: u64,
    /// Symptoms the candidate's planners have not reached yet, left out.
    pub not_reached: u64,
    /// How the decisions compare.
    pub total: Counts,
    /// The candidate's decisions the executor would have refused.
    pub would_be_refused: u64,
    /// The live decisions the executor refused.
    pub live_refused: u64,
    /// Decisions per action: `[live, shadow]`.
    pub per_action: BTreeMap<String, [u64; 2]>,
    /// Every symptom decided on under either policy, in event time, `same` included.
    pub decisions: Vec<ShadowCompared>,
}

/// Compares every candidate's shadow decisions in `source` (or only `options.policy`'s)
/// with the live decisions, one report per candidate, by name.
pub async fn shadow_diff(
    source: &Source,
    options: &ShadowOptions,
) -> Result<Vec<ShadowReport>, ReplayError> {
    let shadows = load_shadows(source, options.policy.as_deref()).await?;
    let log = Log::load(source).await?;
    let results = load::<ActionResult>(source, Phase::Execute).await?;
    let results: HashMap<&str, &ActionResult> = results
        .iter()
        .map(|r| (r.decision_id.as_str(), r))
        .collect();
    let outcomes = load::<Outcome>(source, Phase::Knowledge).await?;
    let config = source.config().await?;
    let mut reports = Vec::new();
    for (hash, decisions) in &shadows {
        let policy = config
            .policies
            .get(hash)
            .and_then(|text| Policy::parse(text).ok())
            .ok_or_else(|| {
                ReplayError::Missing(format!(
                    "the text of shadow policy `{}` ({}) is not in MAPEK_CONFIG: its plan \
                     workers record it at start",
                    decisions[0].policy_name,
                    &hash[..hash.len().min(12)]
                ))
            })?;
        let reached = reached(source, &policy).await?;
        let mut judge = Judge::new(options, &policy, &outcomes);
        let refusals = judge.all(decisions);
        let live = Live {
            log: &log,
            results: &results,
        };
        reports.push(compare(
            &live, decisions, &refusals, &reached, &policy, options,
        ));
    }
    reports.sort_by(|a, b| a.policy.cmp(&b.policy));
    Ok(reports)
}

/// The candidates' decisions in `source`, by policy hash, each in stream order; only those
/// of the candidate named `only`, if given.
async fn load_shadows(
    source: &Source,
    only: Option<&str>,
) -> Result<BTreeMap<String, Vec<Decision>>, ReplayError> {
    let mut by_policy: BTreeMap<String, Vec<Decision>> = BTreeMap::new();
    for ShadowDecision(d) in load::<ShadowDecision>(source, Phase::Shadow).await? {
        if only.is_none_or(|name| name == d.policy_name) {
            by_policy.entry(d.policy_hash.clone()).or_default().push(d);
        }
    }
    if by_policy.is_empty() {
        return Err(ReplayError::Missing(format!(
            "no shadow decisions{} in {}: run `mapek run --shadow-policy FILE` (after `mapek \
             streams apply`, which makes MAPEK_SHADOW)",
            only.map(|n| format!(" of policy `{n}`"))
                .unwrap_or_default(),
            source.name()
        )));
    }
    Ok(by_policy)
}

/// Every readable event of `phase` in `source`, in stream order.
async fn load<E: mapek_codec::AvroEvent>(
    source: &Source,
    phase: Phase,
) -> Result<Vec<E>, ReplayError> {
    let mut out = Vec::new();
    source
        .each(phase, None, |r| {
            if let Ok(e) = r.decode::<E>() {
                out.push(e);
            }
        })
        .await?;
    Ok(out)
}

/// How far a candidate's planners have read the symptoms: the stream sequence acknowledged
/// in each partition. Everything, for a slice (which has no consumers).
async fn reached(source: &Source, policy: &Policy) -> Result<Reached, ReplayError> {
    let Source::Live(js) = source else {
        return Ok(Reached::All);
    };
    Ok(Reached::Through(acked_through(js, policy).await?))
}

async fn acked_through(js: &JetStream, policy: &Policy) -> Result<BTreeMap<u32, u64>, ReplayError> {
    let mut through = BTreeMap::new();
    let stream = Phase::Analyze.stream();
    let Ok(stream) = js.get_stream(stream).await else {
        return Ok(through);
    };
    for p in 0..mapek_bus::layout::partitions_of(js, Phase::Analyze).await? {
        let name = format!("{}-p{p}", ShadowDecision::workers(policy.name()));
        if let Ok(mut consumer) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
            .await
            && let Ok(info) = consumer.info().await
        {
            through.insert(p, info.ack_floor.stream_sequence);
        }
    }
    Ok(through)
}

/// Which symptoms a candidate's planners have decided on already.
enum Reached {
    /// All of them.
    All,
    /// Those at or before this stream sequence of their partition.
    Through(BTreeMap<u32, u64>),
}

impl Reached {
    fn has(&self, symptom: &Stored<Symptom>) -> bool {
        match self {
            Reached::All => true,
            Reached::Through(through) => through
                .get(&symptom.partition)
                .is_some_and(|t| symptom.seq <= *t),
        }
    }
}

/// The candidate's decisions through the executor's interlocks, as if it were live.
struct Judge {
    interlocks: Interlocks,
    /// When each incident's live outcome came in, by incident id.
    settled: HashMap<String, Vec<Outcome>>,
}

impl Judge {
    fn new(options: &ShadowOptions, policy: &Policy, outcomes: &[Outcome]) -> Self {
        let mut interlocks = Interlocks::new(options.execute.clone());
        interlocks.learn_policy(policy.clone());
        interlocks.mesh_reports(options.mesh_nodes);
        let mut settled: HashMap<String, Vec<Outcome>> = HashMap::new();
        for o in outcomes {
            settled
                .entry(o.incident_id.clone())
                .or_default()
                .push(o.clone());
        }
        Self {
            interlocks,
            settled,
        }
    }

    /// Judges `decisions` in event time; the refusals, by decision id.
    fn all(&mut self, decisions: &[Decision]) -> HashMap<String, String> {
        let mut order: Vec<&Decision> = decisions.iter().collect();
        order.sort_by_key(|d| d.ts_ms);
        // The candidate's actions whose incident's live outcome is still to come, by the
        // outcome's time.
        let mut pending: Vec<Outcome> = Vec::new();
        let mut refused = HashMap::new();
        for d in order {
            pending.retain(|o| {
                let due = o.ts_ms <= d.ts_ms;
                if due {
                    self.interlocks.apply_outcome(o);
                }
                !due
            });
            let result = match self.interlocks.handle(d, true) {
                Verdict::Record(r) => *r,
                Verdict::Send | Verdict::AwaitApproval(_) => applied(d, 1),
            };
            self.interlocks.apply(&result);
            if result.status == mapek_domain::ActionStatus::Refused {
                refused.insert(d.decision_id.clone(), result.reason_and_escalation());
                continue;
            }
            // Its time under action ends with the live outcome of its incident.
            for o in self.settled.get(&d.incident_id).into_iter().flatten() {
                pending.push(Outcome {
                    decision_id: d.decision_id.clone(),
                    ..o.clone()
                });
            }
        }
        refused
    }
}

/// The live side: the recorded symptoms and decisions, and the executor's results.
struct Live<'a> {
    log: &'a Log,
    results: &'a HashMap<&'a str, &'a ActionResult>,
}

impl Live<'_> {
    fn decision(&self, symptom_id: &str) -> Option<&Decision> {
        self.log.decisions_on(symptom_id).first().map(|d| &d.event)
    }

    fn result(&self, decision: &Decision) -> Option<String> {
        self.results
            .get(decision.decision_id.as_str())
            .map(|r| match r.status {
                mapek_domain::ActionStatus::Applied => "applied".to_owned(),
                _ => format!("{}: {}", r.status.as_str(), r.reason_and_escalation()),
            })
    }
}

/// Pairs the candidate's `decisions` with the live ones, symptom by symptom.
fn compare(
    live: &Live<'_>,
    decisions: &[Decision],
    refusals: &HashMap<String, String>,
    reached: &Reached,
    policy: &Policy,
    options: &ShadowOptions,
) -> ShadowReport {
    let mut report = ShadowReport {
        policy: policy.name().to_owned(),
        policy_hash: policy.hash().to_owned(),
        range: options.range,
        ..Default::default()
    };
    let shadow: HashMap<&str, &Decision> = decisions
        .iter()
        .map(|d| (d.symptom_id.as_str(), d))
        .collect();
    let mut seen = HashMap::new();
    for s in &live.log.symptoms {
        let e = &s.event;
        let wanted =
            options.range.contains(e.ts_ms) && options.node.as_ref().is_none_or(|n| n == &e.node);
        if !wanted || seen.insert(e.symptom_id.as_str(), ()).is_some() {
            continue;
        }
        let live_decision = live.decision(&e.symptom_id);
        let shadow_decision = shadow.get(e.symptom_id.as_str()).copied();
        if !reached.has(s) && shadow_decision.is_none() {
            report.not_reached += u64::from(live_decision.is_some());
            continue;
        }
        let Some(change) = Change::between(live_decision, shadow_decision) else {
            continue;
        };
        report.count(live_decision, shadow_decision);
        report.add(ShadowCompared {
            change,
            symptom_id: e.symptom_id.clone(),
            kind: e.kind.as_str().into(),
            node: e.node.to_string(),
            ts_ms: e.ts_ms,
            live: live_decision.map(Brief::of),
            live_result: live_decision.and_then(|d| live.result(d)),
            shadow: shadow_decision.map(Brief::of),
            would_be_refused: shadow_decision.and_then(|d| refusals.get(&d.decision_id).cloned()),
        });
    }
    report.decisions.sort_by_key(|c| c.ts_ms);
    report
}

impl ShadowReport {
    fn count(&mut self, live: Option<&Decision>, shadow: Option<&Decision>) {
        for (i, d) in [live, shadow].into_iter().enumerate() {
            if let Some(d) = d {
                let kind = d.action.kind.as_str().to_owned();
                self.per_action.entry(kind).or_default()[i] += 1;
            }
        }
    }

    fn add(&mut self, c: ShadowCompared) {
        self.symptoms += 1;
        self.total.add(c.change);
        self.would_be_refused += u64::from(c.would_be_refused.is_some());
        self.live_refused += u64::from(
            c.live_result
                .as_deref()
                .is_some_and(|r| r.starts_with("refused")),
        );
        self.decisions.push(c);
    }
}

impl fmt::Display for ShadowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.total;
        writeln!(
            f,
            "shadow policy {} ({}): {} symptoms decided on",
            self.policy,
            &self.policy_hash[..self.policy_hash.len().min(12)],
            self.symptoms,
        )?;
        writeln!(
            f,
            "  {} same, {} changed, {} shadow only, {} live only; {} would have been refused \
             (live: {} refused)",
            t.same, t.changed, t.added, t.removed, self.would_be_refused, self.live_refused
        )?;
        if self.not_reached > 0 {
            writeln!(
                f,
                "  {} newer symptoms not decided by the shadow yet, left out",
                self.not_reached
            )?;
        }
        writeln!(f, "  per action (live -> shadow):")?;
        for (action, [l, s]) in &self.per_action {
            writeln!(f, "    {action:<16} {l:>6} -> {s}")?;
        }
        for c in &self.decisions {
            if c.change == Change::Same && c.would_be_refused.is_none() {
                continue;
            }
            c.fmt(f)?;
        }
        Ok(())
    }
}

impl fmt::Display for ShadowCompared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let brief = |b: &Option<Brief>| match b {
            Some(b) => format!("{} (rule `{}`)", b.action, b.rule),
            None => "nothing".to_owned(),
        };
        let change = match self.change {
            Change::Same => "same",
            Change::Changed => "changed",
            Change::Added => "shadow only",
            Change::Removed => "live only",
        };
        writeln!(
            f,
            "  {change}: {} {} at {}: live {}{}; shadow {}",
            self.kind,
            self.node,
            format_ms(self.ts_ms),
            brief(&self.live),
            self.live_result
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            brief(&self.shadow),
        )?;
        if let Some(why) = &self.would_be_refused {
            writeln!(f, "    would have been refused: {why}")?;
        }
        if let (Change::Changed | Change::Added, Some(s)) = (self.change, &self.shadow) {
            writeln!(f, "    why: {}", s.reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mapek_domain::{ActionKind, NodeId};
    use mapek_testkit::samples::{TS_MS, decided, judged};

    use super::*;

    /// The candidate's restart of `node` for incident `incident`, `s` seconds in.
    fn restart(incident: &str, node: &str, s: i64) -> Decision {
        let policy = Policy::builtin();
        Decision {
            node: NodeId::new(node).unwrap(),
            policy_name: policy.name().to_owned(),
            policy_hash: policy.hash().to_owned(),
            ..decided(incident, TS_MS + s * 1000, ActionKind::RestartService)
        }
    }

    fn judge(outcomes: &[Outcome]) -> HashMap<String, String> {
        let options = ShadowOptions {
            mesh_nodes: 20,
            ..Default::default()
        };
        let mut judge = Judge::new(&options, &Policy::builtin(), outcomes);
        judge.all(&[
            restart("i1", "n1", 0),
            restart("i2", "n2", 1),
            restart("i3", "n3", 3),
        ])
    }

    #[test]
    fn a_candidates_third_action_on_a_mesh_of_twenty_passes_the_blast_radius_only_once_an_incident_settled()
     {
        // 10 % of 20 nodes: two under action at most.
        let refused = judge(&[]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused["d-i3"].starts_with("blast radius: acting would put 3 of 20 known nodes"),
            "{refused:?}"
        );
        // The live outcome of i1's incident comes before the third: n1 is no longer under
        // action in the candidate's world either.
        let settled = judged(&restart("i1", "n1", 0), TS_MS + 2_000, true);
        assert!(judge(&[settled]).is_empty());
    }
}
