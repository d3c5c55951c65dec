//! `mapek audit verify`: the whole plan stream through a [`Chain`], each chain's start and
//! end against its signed head ([`crate::ends`]), then every result in MAPEK_EXECUTE against
//! the decisions read ([`crate::results`]).
//!
//! What is read, in this order, so that nothing stored while the audit reads makes a genuine
//! log fail: the signed heads (each names a decision stored before the stream is read); the
//! executors' ack floors on MAPEK_PLAN, then the dead letters (a decision is acknowledged
//! only after its result or its dead letter is stored); MAPEK_EXECUTE's last sequence (every
//! result up to it answers a decision stored before the plan stream is read); the plan
//! stream; the results up to that sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use mapek_bus::layout::partition_of;
use mapek_bus::{JetStream, StartAt, Subscriber};
use mapek_domain::{ActionResult, Decision, Phase, Policy, Rejected};

use crate::ends::{self, Ages, Cut, Span};
use crate::results::{Acknowledged, Decided, Rules, Signed};
use crate::witness::{now_ms, stored_ms};
use crate::{AuditError, Broken, Chain, VerifyingKey, heads};

/// The executor's durable reader of MAPEK_PLAN: `execute` for an executor alone,
/// `execute-p<partition>` for executors sharing the work (`mapek_loop::execute` names them
/// after this).
pub const EXECUTOR_READER: &str = "execute";

/// A decision that failed, where it is, and why.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Its stream sequence in MAPEK_PLAN.
    pub seq: u64,
    /// Its decision id, or why it did not decode.
    pub decision: String,
    /// What is wrong.
    pub broken: String,
}

/// A result that failed, or a result missing, and why.
#[derive(Clone, Debug)]
pub struct ResultFailure {
    /// Its stream sequence in MAPEK_EXECUTE; `None` for a result that is missing.
    pub seq: Option<u64>,
    /// The node it names (or its decision names, for a missing one).
    pub node: String,
    /// The decision it answers, or `(undecodable)`.
    pub decision: String,
    /// What is wrong.
    pub broken: String,
}

impl fmt::Display for ResultFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "result seq {seq}: ")?,
            None => f.write_str("result missing: ")?,
        }
        write!(
            f,
            "node {}, decision {}: {}",
            self.node, self.decision, self.broken
        )
    }
}

/// What to check, and with which keys.
#[derive(Clone, Default)]
pub struct AuditOptions {
    /// The decision key: decisions' and heads' signatures are checked with it; only links
    /// without it.
    pub decision_key: Option<VerifyingKey>,
    /// The result key: every result's signature is checked with it; none without it.
    pub result_key: Option<VerifyingKey>,
    /// A chain whose signed head is older than this fails (ADR 0016).
    pub head_within: Option<Duration>,
    /// With the result key, an unsigned result stored before this time (ms since the Unix
    /// epoch) is counted, not failed: it was written before executors signed (ADR 0019).
    pub results_signed_since_ms: Option<i64>,
}

/// What an audit found.
#[derive(Clone, Debug, Default)]
pub struct AuditReport {
    /// Decisions read.
    pub decisions: u64,
    /// Of those, how many passed.
    pub passed: u64,
    /// The partitions whose chains were followed.
    pub partitions: usize,
    /// Every failure, in stream order.
    pub failures: Vec<Failure>,
    /// The chains that lost their start or end, or whose signed head is not to be trusted.
    pub cuts: Vec<Cut>,
    /// How many chains have a signed head stored.
    pub heads: usize,
    /// When the oldest head that reads was signed, in ms since the Unix epoch: a witness
    /// signs every head each minute, so an old one is a witness that stopped, or a head put
    /// back by someone who saved it (ADR 0016).
    pub oldest_head_at_ms: Option<i64>,
    /// Results read.
    pub results: u64,
    /// Of those, how many passed.
    pub results_passed: u64,
    /// Of those that passed, how many carry a signature that verifies with the result key.
    pub results_verified: u64,
    /// Of those that passed, how many are unsigned and were stored before executors began to
    /// sign.
    pub results_unsigned_before: u64,
    /// Every result that failed, in stream order, then every result missing.
    pub result_failures: Vec<ResultFailure>,
}

impl AuditReport {
    /// Whether every decision and every result passed and every chain is whole.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty() && self.cuts.is_empty() && self.result_failures.is_empty()
    }
}

/// Reads MAPEK_PLAN from the start to its current end and checks every decision: the
/// signature with `key` (links only, without), and each partition's chain; then each chain's
/// start and end against the signed heads in `MAPEK_CHAIN`, whatever their age; then every
/// result, without a result key.
pub async fn verify_stream(
    js: &JetStream,
    key: Option<VerifyingKey>,
) -> Result<AuditReport, AuditError> {
    let options = AuditOptions {
        decision_key: key,
        ..AuditOptions::default()
    };
    verify(js, options).await
}

/// Checks the decision log and the results as `options` say (module docs).
pub async fn verify(js: &JetStream, options: AuditOptions) -> Result<AuditReport, AuditError> {
    // The heads first: each then names a decision stored before the stream is read.
    let heads = heads::read_all(js).await?;
    let now_ms = now_ms();
    let ages = |max_age: Duration| Ages {
        max_age_ms: i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX),
        head_within_ms: options
            .head_within
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        now_ms,
    };
    let plan_ages = ages(stream_info(js, Phase::Plan).await?.config.max_age);
    // Every decision acknowledged by now has its result or its dead letter stored by now.
    let acknowledged = acknowledged(js).await?;
    let dead_lettered = dead_lettered_decisions(js).await?;
    let execute = stream_info(js, Phase::Execute).await?;
    let execute_ages = ages(execute.config.max_age);
    let mut report = AuditReport {
        heads: heads.len(),
        oldest_head_at_ms: heads.values().flatten().map(|h| h.at_ms).min(),
        ..AuditReport::default()
    };
    let (spans, decisions) = read_decisions(js, options.decision_key.clone(), &mut report).await?;
    report.cuts = ends::judge(&spans, &heads, options.decision_key.as_ref(), plan_ages);
    let rules = Rules::new(
        options.result_key,
        options.results_signed_since_ms,
        recorded_policies(js).await?,
        decisions,
        plan_ages,
    );
    let through = execute.state.last_sequence;
    let answered = read_results(js, &rules, through, &mut report).await?;
    let missing =
        acknowledged.without_result(rules.decisions(), &answered, &dead_lettered, execute_ages);
    for (decision, decided) in missing {
        report.result_failures.push(ResultFailure {
            seq: None,
            node: decided.node.to_string(),
            decision: decision.to_owned(),
            broken: format!(
                "an executor acknowledged the decision (MAPEK_PLAN seq {}), which it does only \
                 once its result is stored, but MAPEK_EXECUTE holds no result of it: the result \
                 was removed",
                decided.seq
            ),
        });
    }
    Ok(report)
}

/// Reads every decision in MAPEK_PLAN through a [`Chain`] into `report`; returns each
/// chain's span, and the decisions by id for the results to be checked against.
async fn read_decisions(
    js: &JetStream,
    key: Option<VerifyingKey>,
    report: &mut AuditReport,
) -> Result<(BTreeMap<u32, Span>, HashMap<String, Decided>), AuditError> {
    let mut chain = Chain::new(key);
    let mut spans: BTreeMap<u32, Span> = BTreeMap::new();
    let mut decided = HashMap::new();
    let mut decisions =
        Subscriber::<Decision>::open_subject(js, Phase::Plan.stored_filter(None), StartAt::All)
            .await?;
    while let Some(received) = decisions.next_stored().await {
        let received = received?;
        report.decisions += 1;
        let partition = partition_of(&received.subject).unwrap_or(0);
        let outcome = match &received.event {
            Ok(d) => {
                let span = spans.entry(partition).or_default();
                let stored_ms = stored_ms(&received);
                span.read(received.stream_seq, stored_ms, &d.prev_hash, d.chain_hash());
                let kept = Decided::of(d, received.stream_seq, partition, stored_ms);
                decided.insert(d.decision_id.clone(), kept);
                chain
                    .check(partition, d)
                    .map_err(|b: Broken| (d.decision_id.clone(), b.to_string()))
            }
            Err(e) => Err((String::from("(undecodable)"), e.to_string())),
        };
        match outcome {
            Ok(()) => report.passed += 1,
            Err((decision, broken)) => report.failures.push(Failure {
                seq: received.stream_seq,
                decision,
                broken,
            }),
        }
    }
    report.partitions = chain.partitions();
    Ok((spans, decided))
}

/// Reads the results in MAPEK_EXECUTE up to the sequence `through` and checks each with
/// `rules` into `report`; returns the ids of the decisions they answer.
async fn read_results(
    js: &JetStream,
    rules: &Rules,
    through: u64,
    report: &mut AuditReport,
) -> Result<BTreeSet<String>, AuditError> {
    let mut answered = BTreeSet::new();
    let filter = Phase::Execute.stored_filter(None);
    let mut results = Subscriber::<ActionResult>::open_subject(js, filter, StartAt::All).await?;
    while through > 0
        && let Some(received) = results.next_stored().await
    {
        let received = received?;
        if received.stream_seq > through {
            break;
        }
        report.results += 1;
        let stored_ms = stored_ms(&received);
        let result = match received.event {
            Ok(result) => result,
            Err(e) => {
                let node = received.subject.rsplit('.').next().unwrap_or_default();
                report.result_failures.push(ResultFailure {
                    seq: Some(received.stream_seq),
                    node: node.to_owned(),
                    decision: "(undecodable)".to_owned(),
                    broken: e.to_string(),
                });
                continue;
            }
        };
        answered.insert(result.decision_id.clone());
        match rules.check(&result, stored_ms) {
            Ok(signed) => {
                report.results_passed += 1;
                match signed {
                    Signed::Verified => report.results_verified += 1,
                    Signed::Before => report.results_unsigned_before += 1,
                    Signed::Unchecked => {}
                }
            }
            Err(wrong) => {
                let broken: Vec<String> = wrong.iter().map(ToString::to_string).collect();
                report.result_failures.push(ResultFailure {
                    seq: Some(received.stream_seq),
                    node: result.node.to_string(),
                    decision: result.decision_id,
                    broken: broken.join("; "),
                });
            }
        }
    }
    Ok(answered)
}

/// How far each executor reader of MAPEK_PLAN has acknowledged, as the server has it now.
async fn acknowledged(js: &JetStream) -> Result<Acknowledged, AuditError> {
    let stream = js
        .get_stream(Phase::Plan.stream())
        .await
        .map_err(|e| stream_failed(Phase::Plan, e.to_string()))?;
    // A reader that is not there (no executor ran that way, or one is taking it over)
    // vouches for nothing.
    let floor = async |name: String| {
        stream
            .consumer_info(name)
            .await
            .map_or(0, |info| info.ack_floor.stream_sequence)
    };
    let mut acknowledged = Acknowledged {
        whole: floor(EXECUTOR_READER.to_owned()).await,
        partitions: BTreeMap::new(),
    };
    let partitions = mapek_bus::layout::partitions_of(js, Phase::Plan).await?;
    for p in 0..partitions {
        let f = floor(format!("{EXECUTOR_READER}-p{p}")).await;
        if f > 0 {
            acknowledged.partitions.insert(p, f);
        }
    }
    Ok(acknowledged)
}

/// The MAPEK_PLAN sequences of the decisions dead-lettered: acknowledged without a result.
async fn dead_lettered_decisions(js: &JetStream) -> Result<BTreeSet<u64>, AuditError> {
    let filter = format!("mapek.dlq.{}", Phase::Plan.token());
    let mut rejected = Subscriber::<Rejected>::open_subject(js, filter, StartAt::All).await?;
    let mut seqs = BTreeSet::new();
    while let Some(received) = rejected.next_stored().await {
        let received = received?;
        if let Ok(r) = received.event
            && let Ok(seq) = u64::try_from(r.stream_seq)
        {
            seqs.insert(seq);
        }
    }
    Ok(seqs)
}

/// Every policy the plan workers recorded, by hash; one that does not parse is left out (the
/// executor could not read it either, and escalated its refusals as an unknown policy's).
async fn recorded_policies(js: &JetStream) -> Result<BTreeMap<String, Policy>, AuditError> {
    let recorded = mapek_bus::config_store::read(js).await?;
    let parsed = recorded
        .policies
        .into_iter()
        .filter_map(|(hash, text)| Policy::parse(&text).ok().map(|p| (hash, p)));
    Ok(parsed.collect())
}

fn stream_failed(phase: Phase, detail: String) -> mapek_bus::BusError {
    mapek_bus::BusError::Stream {
        stream: phase.stream().to_owned(),
        detail,
    }
}

/// A phase's stream's configuration and state, as the server has them now.
pub(crate) async fn stream_info(
    js: &JetStream,
    phase: Phase,
) -> Result<async_nats::jetstream::stream::Info, mapek_bus::BusError> {
    let mut stream = js
        .get_stream(phase.stream())
        .await
        .map_err(|e| stream_failed(phase, e.to_string()))?;
    stream
        .info()
        .await
        .map_err(|e| stream_failed(phase, e.to_string()))
        .cloned()
}
