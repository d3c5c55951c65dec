//! `replay incident <id>`: an incident's story, as a timeline read from the log.
//!
//! The symptoms name their incident, and so do decisions, action results and outcomes (their
//! `incident_id`); each symptom's `caused_by` names the telemetry that tipped its detector.
//! The policy rule behind a decision is read from the recorded policy its hash names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mapek_bus::headers::MSG_ID;
use mapek_bus::layout::partition_of;
use mapek_domain::{
    ActionResult, ActionStatus, Decision, Outcome, Phase, Policy, Symptom, Telemetry,
};
use serde::Serialize;

use crate::merge::stream_key;
use crate::record::Record;
use crate::whatif::describe;
use crate::{ReplayError, Source};

/// A stage of the loop, in the order a story tells them at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Telemetry that crossed a threshold.
    Telemetry,
    /// A symptom: open, update, resolve.
    Symptom,
    /// A decision.
    Decision,
    /// An interlock refused the action.
    Interlock,
    /// The action and its result.
    Action,
    /// Whether the action cleared the symptom.
    Outcome,
}

/// One line of the timeline, with its details.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// Event time.
    pub ts_ms: i64,
    /// Which stage.
    pub stage: Stage,
    /// The event's id.
    pub event_id: String,
    /// One line.
    pub title: String,
    /// Further lines: evidence, reason, rule, neighbours.
    pub details: Vec<String>,
    /// Where it is stored, to order entries of the same instant and stage as they were
    /// stored (the stream first: telemetry may be split over several).
    #[serde(skip)]
    stored: (String, u64),
}

/// An incident's story.
#[derive(Clone, Debug, Serialize)]
pub struct Story {
    /// The incident.
    pub incident_id: String,
    /// Its node.
    pub node: String,
    /// Everything that happened, in time order.
    pub entries: Vec<Entry>,
}

impl Story {
    /// Whether the story has an entry of `stage`.
    pub fn has(&self, stage: Stage) -> bool {
        self.entries.iter().any(|e| e.stage == stage)
    }
}

fn collect<E: mapek_codec::AvroEvent>(
    into: &mut Vec<(Record, E)>,
    want: impl Fn(&E) -> bool,
) -> impl FnMut(Record) {
    move |r: Record| {
        if let Ok(e) = r.decode::<E>()
            && want(&e)
        {
            into.push((r, e));
        }
    }
}

/// Tells the story of `incident_id` from `source`.
pub async fn incident_story(source: &Source, incident_id: &str) -> Result<Story, ReplayError> {
    let mut symptoms: Vec<(Record, Symptom)> = Vec::new();
    let mut decisions: Vec<(Record, Decision)> = Vec::new();
    let mut results: Vec<(Record, ActionResult)> = Vec::new();
    let mut outcomes: Vec<(Record, Outcome)> = Vec::new();
    let mine = |id: &str| id == incident_id;
    source
        .each(
            Phase::Analyze,
            None,
            collect(&mut symptoms, |s: &Symptom| mine(&s.incident_id)),
        )
        .await?;
    source
        .each(
            Phase::Plan,
            None,
            collect(&mut decisions, |d: &Decision| mine(&d.incident_id)),
        )
        .await?;
    source
        .each(
            Phase::Execute,
            None,
            collect(&mut results, |r: &ActionResult| mine(&r.incident_id)),
        )
        .await?;
    source
        .each(
            Phase::Knowledge,
            None,
            collect(&mut outcomes, |o: &Outcome| mine(&o.incident_id)),
        )
        .await?;
    let node = symptoms
        .first()
        .map(|(_, s)| s.node.to_string())
        .or_else(|| decisions.first().map(|(_, d)| d.node.to_string()))
        .or_else(|| results.first().map(|(_, r)| r.node.to_string()))
        .or_else(|| outcomes.first().map(|(_, o)| o.node.to_string()))
        .ok_or_else(|| ReplayError::NoIncident {
            id: incident_id.to_owned(),
            source_name: source.name(),
        })?;

    // The telemetry behind the symptoms, looked up by id in the symptoms' partitions (each in
    // one stream, whatever the layout).
    let causes: BTreeSet<String> = symptoms.iter().map(|(_, s)| s.caused_by.clone()).collect();
    let partitions: BTreeSet<Option<u32>> = symptoms
        .iter()
        .map(|(r, _)| partition_of(&r.subject))
        .collect();
    let mut telemetry: Vec<(Record, Telemetry)> = Vec::new();
    for p in partitions {
        let filter = p.map(|p| format!("mapek.monitor.{p}.>"));
        source
            .each(Phase::Monitor, filter, |r| {
                if r.header(MSG_ID).is_some_and(|id| causes.contains(id))
                    && let Ok(t) = r.decode::<Telemetry>()
                {
                    telemetry.push((r, t));
                }
            })
            .await?;
    }

    let config = source.config().await?;
    let policies: BTreeMap<String, Policy> = config
        .policies
        .values()
        .filter_map(|t| Policy::parse(t).ok())
        .chain(std::iter::once(Policy::builtin()))
        .map(|p| (p.hash().to_owned(), p))
        .collect();

    let mut entries = Vec::new();
    for (r, t) in &telemetry {
        entries.push(telemetry_entry(r, t, &symptoms));
    }
    for (r, s) in &symptoms {
        entries.push(symptom_entry(r, s));
    }
    for (r, d) in &decisions {
        entries.push(decision_entry(r, d, policies.get(&d.policy_hash)));
    }
    for (r, a) in &results {
        entries.push(result_entry(r, a));
    }
    for (r, o) in &outcomes {
        entries.push(outcome_entry(r, o));
    }
    fn key(e: &Entry) -> (i64, Stage, (&str, Option<usize>), u64) {
        (e.ts_ms, e.stage, stream_key(&e.stored.0), e.stored.1)
    }
    entries.sort_by(|a, b| key(a).cmp(&key(b)));
    Ok(Story {
        incident_id: incident_id.to_owned(),
        node,
        entries,
    })
}

fn num(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn telemetry_entry(r: &Record, t: &Telemetry, symptoms: &[(Record, Symptom)]) -> Entry {
    let metrics: Vec<String> = t
        .metrics
        .iter()
        .map(|(k, v)| format!("{k}={}", num(*v)))
        .collect();
    let mut details = vec![format!("metrics: {}", metrics.join(", "))];
    for l in &t.links {
        details.push(format!(
            "link to {}: {}, latency {} ms, loss {}",
            l.peer,
            if l.up { "up" } else { "down" },
            num(l.latency_ms),
            num(l.loss)
        ));
    }
    let tipped: Vec<String> = symptoms
        .iter()
        .filter(|(_, s)| s.caused_by == t.event_id)
        .map(|(_, s)| format!("{} {}", s.kind.as_str(), s.state.as_str()))
        .collect();
    Entry {
        ts_ms: t.ts_ms,
        stage: Stage::Telemetry,
        event_id: t.event_id.clone(),
        title: format!("telemetry from {} tipped {}", t.node, tipped.join(", ")),
        details,
        stored: (r.stream.clone(), r.seq),
    }
}

fn symptom_entry(r: &Record, s: &Symptom) -> Entry {
    let peer = s
        .peer
        .as_ref()
        .map(|p| format!(" with peer {p}"))
        .unwrap_or_default();
    let evidence: Vec<String> = s
        .evidence
        .iter()
        .map(|(k, v)| format!("{k}={}", num(*v)))
        .collect();
    Entry {
        ts_ms: s.ts_ms,
        stage: Stage::Symptom,
        event_id: s.symptom_id.clone(),
        title: format!(
            "symptom {} {} on {}{peer}, severity {}",
            s.state.as_str(),
            s.kind.as_str(),
            s.node,
            num(s.severity)
        ),
        details: vec![
            s.summary.clone(),
            format!("evidence: {}", evidence.join(", ")),
            format!("caused by telemetry {}", s.caused_by),
        ],
        stored: (r.stream.clone(), r.seq),
    }
}

fn decision_entry(r: &Record, d: &Decision, policy: Option<&Policy>) -> Entry {
    let mut details = vec![
        format!("reason: {}", d.reason),
        format!(
            "policy {} ({})",
            d.policy_name,
            &d.policy_hash[..d.policy_hash.len().min(12)]
        ),
    ];
    match policy.and_then(|p| p.rule(&d.rule)) {
        Some(rule) => {
            let candidates: Vec<String> = rule
                .candidates
                .iter()
                .map(|c| format!("{} (cooldown {} s)", c.action.as_str(), c.cooldown_secs))
                .collect();
            let min = rule.min_severity.map(num).unwrap_or_else(|| "any".into());
            let peer = match rule.has_peer {
                Some(true) => ", with a peer",
                Some(false) => ", without a peer",
                None => "",
            };
            details.push(format!(
                "rule `{}`: {} at severity {min}{peer}; candidates {}",
                rule.name,
                rule.symptom.as_str(),
                candidates.join(", ")
            ));
        }
        None if policy.is_some() => {
            details.push(format!("rule `{}` (the policy's fallback)", d.rule))
        }
        None => details.push(format!(
            "rule `{}` (the policy text was not recorded)",
            d.rule
        )),
    }
    if d.knowledge.is_empty() {
        details.push("neighbours: none consulted".into());
    }
    for n in &d.knowledge {
        details.push(format!(
            "neighbour {} (score {}): {} {}",
            n.incident_id,
            num(n.score),
            n.action.as_str(),
            if n.resolved {
                "resolved it"
            } else {
                "did not resolve it"
            }
        ));
    }
    Entry {
        ts_ms: d.ts_ms,
        stage: Stage::Decision,
        event_id: d.decision_id.clone(),
        title: format!("decision: {} (rule `{}`)", describe(&d.action), d.rule),
        details,
        stored: (r.stream.clone(), r.seq),
    }
}

fn result_entry(r: &Record, a: &ActionResult) -> Entry {
    let dry = if a.dry_run { " (dry run)" } else { "" };
    let (stage, title) = match a.status {
        ActionStatus::Refused => (
            Stage::Interlock,
            format!(
                "interlock refused {}: {}",
                describe(&a.action),
                a.reason_and_escalation()
            ),
        ),
        ActionStatus::Applied => (
            Stage::Action,
            format!(
                "action {} applied after {} attempts{dry}",
                describe(&a.action),
                a.attempts
            ),
        ),
        ActionStatus::Failed => (
            Stage::Action,
            format!(
                "action {} failed after {} attempts{dry}: {}",
                describe(&a.action),
                a.attempts,
                a.reason
            ),
        ),
    };
    Entry {
        ts_ms: a.ts_ms,
        stage,
        event_id: a.result_id.clone(),
        title,
        details: vec![format!("decision {}", a.decision_id)],
        stored: (r.stream.clone(), r.seq),
    }
}

fn outcome_entry(r: &Record, o: &Outcome) -> Entry {
    let took = o
        .recovery_ms
        .map(|ms| format!(", {} s after the incident opened", num(ms as f64 / 1000.0)))
        .unwrap_or_default();
    Entry {
        ts_ms: o.ts_ms,
        stage: Stage::Outcome,
        event_id: o.outcome_id.clone(),
        title: format!("outcome: {}{took}", o.result.as_str()),
        details: vec![o.detail.clone()],
        stored: (r.stream.clone(), r.seq),
    }
}

impl fmt::Display for Story {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "incident {} on {}", self.incident_id, self.node)?;
        let start = self.entries.first().map_or(0, |e| e.ts_ms);
        for e in &self.entries {
            let at = (e.ts_ms - start) as f64 / 1000.0;
            writeln!(
                f,
                "{:>+9.3} s  {:<9}  {}",
                at,
                format!("{:?}", e.stage).to_lowercase(),
                e.title
            )?;
            for d in &e.details {
                writeln!(f, "{:>24}{d}", "")?;
            }
        }
        Ok(())
    }
}
