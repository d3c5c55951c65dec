//! `replay verify`: run analyze and plan again over the recorded log and check that every
//! symptom and decision comes out byte for byte as recorded.
//!
//! Analyze: one [`Analyzer`] per partition of the telemetry, fed that partition's telemetry in
//! stream order from the first message, with the analyze configuration recorded in force. A
//! partition is stored in one stream whatever the layout (`MAPEK_MONITOR`, or one of
//! `MAPEK_MONITOR_<n>` when the server splits telemetry), so its order is its stream's.
//! Plan: one [`mapek_domain::Planner`] per partition of `MAPEK_ANALYZE`, fed the *recorded*
//! symptoms in stream order, with the policy and the knowledge each recorded decision names
//! (see the `log` module). Checking plan against the recorded symptoms keeps a difference in
//! one phase from showing up again in the next.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

use mapek_bus::layout::partition_of;
use mapek_codec::{encode, same_message};
use mapek_domain::{AnalyzeConfig, Analyzer, Decision, NodeId, Phase, Policy, Symptom, Telemetry};
use serde::Serialize;

use crate::diff::{FieldDiff, fields};
use crate::log::{Log, Policies, Stored, UNPARTITIONED, replay_plan};
use crate::{Range, ReplayError, Source};

/// How a replayed event differs from the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Both exist and differ.
    Changed,
    /// Replay made it; it was not recorded.
    Added,
    /// It was recorded; replay does not make it.
    Removed,
}

/// One event that did not come out the same.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    /// `symptom` or `decision`.
    pub what: &'static str,
    /// Changed, added or removed.
    pub kind: DiffKind,
    /// The symptom id (for a decision, of the symptom it answers).
    pub symptom_id: String,
    /// The node.
    pub node: String,
    /// Event time.
    pub ts_ms: i64,
    /// The recorded event's stream sequence, if there is one.
    pub seq: Option<u64>,
    /// The fields that differ (changed only); empty when only the encodings differ.
    pub fields: Vec<FieldDiff>,
}

/// Counts for one kind of event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Recorded in the range (distinct encodings).
    pub recorded: u64,
    /// Made by the replay in the range.
    pub replayed: u64,
    /// Byte for byte the same.
    pub identical: u64,
    /// Recorded, and replay made something else.
    pub different: u64,
    /// Made by replay only.
    pub added: u64,
    /// Recorded only.
    pub removed: u64,
}

impl Tally {
    fn differences(&self) -> u64 {
        self.different + self.added + self.removed
    }
}

/// What `replay verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// The range compared.
    pub range: Range,
    /// Telemetry read (every telemetry stream, whole: state needs all of it).
    pub telemetry: u64,
    /// Symptoms.
    pub symptoms: Tally,
    /// Decisions.
    pub decisions: Tally,
    /// Messages that did not decode; the workers dead-lettered them and so does replay.
    pub unreadable: u64,
    /// Every difference, symptoms first, each in stream order.
    pub differences: Vec<Difference>,
    /// What the replay ran with and what it had to assume.
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether every symptom and decision came out the same.
    pub fn ok(&self) -> bool {
        self.symptoms.differences() + self.decisions.differences() == 0
    }

    /// Every event read: telemetry, symptoms and decisions.
    pub fn events(&self) -> u64 {
        self.telemetry + self.symptoms.recorded + self.decisions.recorded
    }
}

/// Progress through the telemetry, the long part of a verify.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Telemetry read so far.
    pub done: u64,
    /// Telemetry the streams held at the start.
    pub total: u64,
    /// Time since the read began.
    pub elapsed: std::time::Duration,
}

/// What to verify beyond the range.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Compare only this node's symptoms and decisions (state is still built from its whole
    /// partition).
    pub node: Option<NodeId>,
    /// Policies whose text was not recorded, by file.
    pub policies: Vec<Policy>,
    /// Skip analyze (check decisions against the recorded symptoms only).
    pub plan_only: bool,
}

/// Verifies `range` of `source`: every symptom and decision whose event time lies in it.
pub async fn verify(
    source: &Source,
    range: Range,
    node: Option<&NodeId>,
) -> Result<VerifyReport, ReplayError> {
    let options = VerifyOptions {
        node: node.cloned(),
        ..Default::default()
    };
    verify_with(source, range, &options, &mut |_| {}).await
}

/// [`verify`] with options, calling `progress` now and then while it reads telemetry.
pub async fn verify_with(
    source: &Source,
    range: Range,
    options: &VerifyOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<VerifyReport, ReplayError> {
    let config = source.config().await?;
    let log = Log::load(source).await?;
    let policies = Policies::new(&config, &log, &options.policies)?;
    let wanted = |node: &NodeId, ts: i64| {
        range.contains(ts) && options.node.as_ref().is_none_or(|n| n == node)
    };
    let mut report = VerifyReport {
        range,
        unreadable: log.unreadable,
        ..Default::default()
    };
    let mut names: Vec<String> = policies
        .known
        .values()
        .filter(|p| {
            log.decisions
                .iter()
                .any(|d| d.event.policy_hash == p.hash())
        })
        .map(|p| format!("{} ({})", p.name(), &p.hash()[..12]))
        .collect();
    if names.is_empty() {
        let p = &policies.known[&policies.default];
        names.push(format!("{} ({})", p.name(), &p.hash()[..12]));
    }
    report
        .notes
        .push(format!("plan ran with policy {}", names.join(", ")));

    if !options.plan_only {
        let analyze = match config.current_analyze() {
            Some((hash, c)) => {
                report.notes.push(format!(
                    "analyze ran with the recorded configuration {}",
                    &hash[..12]
                ));
                if config.analyze_history.len() > 1 {
                    report.notes.push(format!(
                        "the analyze configuration changed {} times; replay uses the last \
                         (docs/adr/0005)",
                        config.analyze_history.len() - 1
                    ));
                }
                c.clone()
            }
            None => {
                report
                    .notes
                    .push("no analyze configuration was recorded: replay used the defaults".into());
                AnalyzeConfig::default()
            }
        };
        let replayed = replay_analyze(source, &analyze, &mut report, progress).await?;
        compare_symptoms(&log, replayed, &wanted, &mut report);
    }
    compare_decisions(&log, &policies, &wanted, &mut report);
    Ok(report)
}

/// Runs the analyzers over the telemetry; returns the replayed symptoms by id, with their
/// encodings.
async fn replay_analyze(
    source: &Source,
    config: &AnalyzeConfig,
    report: &mut VerifyReport,
    progress: &mut dyn FnMut(Progress),
) -> Result<HashMap<String, (Symptom, Vec<u8>)>, ReplayError> {
    let again = analyze_again(source, config, progress).await?;
    report.telemetry = again.telemetry;
    report.unreadable += again.unreadable;
    Ok(again
        .symptoms
        .into_iter()
        .map(|(_, s)| {
            let bytes = encode(&s).unwrap_or_default();
            (s.symptom_id.clone(), (s, bytes))
        })
        .collect())
}

/// What analyze finds in the recorded telemetry when run again.
pub(crate) struct AnalyzedAgain {
    /// The symptoms, in the order the analyzers emitted them (by telemetry stream order),
    /// each with the partition of the telemetry it was found in.
    pub(crate) symptoms: Vec<(u32, Symptom)>,
    /// Telemetry messages read.
    pub(crate) telemetry: u64,
    /// Telemetry messages that did not decode.
    pub(crate) unreadable: u64,
}

/// Runs one [`Analyzer`] per telemetry partition with `config` over the recorded telemetry,
/// each fed its partition's telemetry in stream order from the first message.
pub(crate) async fn analyze_again(
    source: &Source,
    config: &AnalyzeConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<AnalyzedAgain, ReplayError> {
    let total = source.count(Phase::Monitor).await?;
    let mut analyzers: BTreeMap<u32, Analyzer> = BTreeMap::new();
    let mut symptoms = Vec::new();
    let (mut done, mut unreadable) = (0u64, 0u64);
    let started = Instant::now();
    source
        .each(Phase::Monitor, None, |r| {
            done += 1;
            if done.is_multiple_of(16_384) {
                progress(Progress {
                    done,
                    total,
                    elapsed: started.elapsed(),
                });
            }
            let Ok(t) = r.decode::<Telemetry>() else {
                unreadable += 1;
                return;
            };
            let partition = partition_of(&r.subject).unwrap_or(UNPARTITIONED);
            let analyzer = analyzers
                .entry(partition)
                .or_insert_with(|| Analyzer::new(config.clone()));
            symptoms.extend(analyzer.step(&t).into_iter().map(|s| (partition, s)));
        })
        .await?;
    progress(Progress {
        done,
        total: total.max(done),
        elapsed: started.elapsed(),
    });
    Ok(AnalyzedAgain {
        symptoms,
        telemetry: done,
        unreadable,
    })
}

fn compare_symptoms(
    log: &Log,
    mut replayed: HashMap<String, (Symptom, Vec<u8>)>,
    wanted: &dyn Fn(&NodeId, i64) -> bool,
    report: &mut VerifyReport,
) {
    let mut seen: HashMap<&str, Vec<&[u8]>> = HashMap::new();
    let tally = &mut report.symptoms;
    for s in &log.symptoms {
        let e = &s.event;
        let bytes = seen.entry(e.symptom_id.as_str()).or_default();
        if bytes.iter().any(|b| same_message(b, &s.bytes)) || !wanted(&e.node, e.ts_ms) {
            continue;
        }
        bytes.push(s.bytes.as_ref());
        tally.recorded += 1;
        match replayed.get(&e.symptom_id) {
            Some((_, b)) if same_message(b, &s.bytes) => tally.identical += 1,
            Some((r, _)) => {
                tally.different += 1;
                report
                    .differences
                    .push(difference("symptom", DiffKind::Changed, s, fields(e, r)));
            }
            None => {
                tally.removed += 1;
                report
                    .differences
                    .push(difference("symptom", DiffKind::Removed, s, vec![]));
            }
        }
    }
    let mut added: Vec<(Symptom, Vec<u8>)> = replayed
        .drain()
        .filter(|(id, (s, _))| !seen.contains_key(id.as_str()) && wanted(&s.node, s.ts_ms))
        .map(|(_, v)| v)
        .collect();
    tally.replayed = tally.identical + tally.different;
    added.sort_by(|a, b| (a.0.ts_ms, &a.0.symptom_id).cmp(&(b.0.ts_ms, &b.0.symptom_id)));
    for (s, _) in added {
        tally.added += 1;
        tally.replayed += 1;
        report.differences.push(Difference {
            what: "symptom",
            kind: DiffKind::Added,
            symptom_id: s.symptom_id.clone(),
            node: s.node.to_string(),
            ts_ms: s.ts_ms,
            seq: None,
            fields: vec![],
        });
    }
}

fn compare_decisions(
    log: &Log,
    policies: &Policies,
    wanted: &dyn Fn(&NodeId, i64) -> bool,
    report: &mut VerifyReport,
) {
    let mut answered: HashMap<&str, ()> = HashMap::new();
    let mut diffs = Vec::new();
    let tally = &mut report.decisions;
    replay_plan(log, policies, |s, decided| {
        let e = &s.event;
        if answered.insert(e.symptom_id.as_str(), ()).is_some() || !wanted(&e.node, e.ts_ms) {
            return;
        }
        let recorded = log.decisions_on(&e.symptom_id);
        tally.replayed += u64::from(decided.is_some());
        let mut matched = false;
        for r in &recorded {
            tally.recorded += 1;
            // The planner does not sign; the signer after it does, with a randomized
            // signature. Replay compares every other byte (`mapek audit verify` checks the
            // signatures).
            let decided = decided.clone().map(|mut d| {
                if d.signature.is_empty() {
                    d.signature = r.event.signature.clone();
                }
                d
            });
            let bytes = decided.as_ref().map(|d| encode(d).unwrap_or_default());
            match (&decided, &bytes) {
                (Some(_), Some(b)) if same_message(b, &r.bytes) => {
                    tally.identical += 1;
                    matched = true;
                }
                (Some(d), _) => {
                    tally.different += 1;
                    diffs.push(difference(
                        "decision",
                        DiffKind::Changed,
                        r,
                        fields(&r.event, d),
                    ));
                }
                (None, _) => {
                    tally.removed += 1;
                    diffs.push(difference("decision", DiffKind::Removed, r, vec![]));
                }
            }
        }
        if let Some(d) = decided
            && recorded.is_empty()
            && !matched
        {
            tally.added += 1;
            diffs.push(Difference {
                what: "decision",
                kind: DiffKind::Added,
                symptom_id: d.symptom_id.clone(),
                node: d.node.to_string(),
                ts_ms: d.ts_ms,
                seq: None,
                fields: vec![],
            });
        }
    });
    // Decisions on symptoms the analyze stream does not hold cannot be replayed.
    for d in &log.decisions {
        let e: &Decision = &d.event;
        if !answered.contains_key(e.symptom_id.as_str()) && wanted(&e.node, e.ts_ms) {
            tally.recorded += 1;
            tally.removed += 1;
            diffs.push(difference("decision", DiffKind::Removed, d, vec![]));
        }
    }
    report.differences.extend(diffs);
}

fn difference<E: mapek_domain::Event>(
    what: &'static str,
    kind: DiffKind,
    stored: &Stored<E>,
    fields: Vec<FieldDiff>,
) -> Difference {
    let e = &stored.event;
    Difference {
        what,
        kind,
        symptom_id: e
            .causation()
            .filter(|_| what == "decision")
            .unwrap_or(e.event_id())
            .to_owned(),
        node: e.node().to_string(),
        ts_ms: e.ts_ms(),
        seq: Some(stored.seq),
        fields,
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
        match self.kind {
            DiffKind::Changed => {
                writeln!(
                    f,
                    "{} on symptom {} for {} at {}{at} differs:",
                    self.what, self.symptom_id, self.node, self.ts_ms
                )?;
                if self.fields.is_empty() {
                    writeln!(
                        f,
                        "    the same values, encoded differently (another writer schema?)"
                    )?;
                }
                for d in &self.fields {
                    writeln!(
                        f,
                        "    {}:\n      recorded: {}\n      replayed: {}",
                        d.field, d.recorded, d.replayed
                    )?;
                }
                Ok(())
            }
            DiffKind::Added => writeln!(
                f,
                "{} on symptom {} for {} at {}: replay makes it, but none was recorded",
                self.what, self.symptom_id, self.node, self.ts_ms
            ),
            DiffKind::Removed => writeln!(
                f,
                "{} on symptom {} for {} at {}{at}: recorded, but replay makes none",
                self.what, self.symptom_id, self.node, self.ts_ms
            ),
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.differences {
            write!(f, "{d}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        let t = |t: &Tally| {
            format!(
                "{} recorded, {} identical, {} different, {} added, {} removed",
                t.recorded, t.identical, t.different, t.added, t.removed
            )
        };
        writeln!(
            f,
            "events: {} ({} telemetry, {} unreadable)",
            self.events(),
            self.telemetry,
            self.unreadable
        )?;
        writeln!(f, "symptoms: {}", t(&self.symptoms))?;
        writeln!(f, "decisions: {}", t(&self.decisions))?;
        let n = self.symptoms.differences() + self.decisions.differences();
        if n == 0 {
            writeln!(
                f,
                "verdict: identical: every symptom and decision replays byte for byte"
            )
        } else {
            writeln!(f, "verdict: {n} differences")
        }
    }
}
