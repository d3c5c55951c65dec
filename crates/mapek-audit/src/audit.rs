//! `mapek audit verify`: the whole plan stream through a [`Chain`], and each chain's start and
//! end against its signed head ([`crate::ends`]).

use std::collections::BTreeMap;

use mapek_bus::{JetStream, StartAt, Subscriber};
use mapek_domain::{Decision, Phase};

use crate::ends::{self, Ages, Cut, Span};
use crate::witness::{now_ms, stored_ms};
use crate::{AuditError, Broken, Chain, VerifyingKey, heads};

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
}

impl AuditReport {
    /// Whether every decision passed and every chain is whole.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty() && self.cuts.is_empty()
    }
}

/// The chain a stored plan subject's decision belongs to: its partition
/// (`mapek.plan.<p>.<node>`), or 0 for a subject without one (a stream without the partition
/// transform).
pub fn chain_of(subject: &str) -> u32 {
    mapek_bus::layout::partition_of(subject).unwrap_or(0)
}

/// Reads MAPEK_PLAN from the start to its current end and checks every decision: the
/// signature with `key` (links only, without), and each partition's chain; then each chain's
/// start and end against the signed heads in `MAPEK_CHAIN`, whatever their age.
pub async fn verify_stream(
    js: &JetStream,
    key: Option<VerifyingKey>,
) -> Result<AuditReport, AuditError> {
    verify_stream_within(js, key, None).await
}

/// Like [`verify_stream`], and with `head_within` a chain whose head was signed longer ago
/// than that fails too (ADR 0016: a running witness signs every head each minute).
pub async fn verify_stream_within(
    js: &JetStream,
    key: Option<VerifyingKey>,
    head_within: Option<std::time::Duration>,
) -> Result<AuditReport, AuditError> {
    // The heads first: each then names a decision stored before the stream is read.
    let heads = heads::read_all(js).await?;
    let ages = Ages {
        max_age_ms: i64::try_from(plan_info(js).await?.config.max_age.as_millis())
            .unwrap_or(i64::MAX),
        head_within_ms: head_within.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        now_ms: now_ms(),
    };
    let mut chain = Chain::new(key.clone());
    let mut spans: BTreeMap<u32, Span> = BTreeMap::new();
    let mut report = AuditReport {
        heads: heads.len(),
        oldest_head_at_ms: heads.values().flatten().map(|h| h.at_ms).min(),
        ..AuditReport::default()
    };
    let mut decisions =
        Subscriber::<Decision>::open_subject(js, Phase::Plan.stored_filter(None), StartAt::All)
            .await?;
    let mut more = decisions.pending_at_start() > 0;
    while more && let Some(received) = decisions.next().await {
        let received = received?;
        report.decisions += 1;
        more = received.pending > 0;
        let partition = chain_of(&received.subject);
        let outcome = match &received.event {
            Ok(d) => {
                let span = spans.entry(partition).or_default();
                let stored_ms = stored_ms(&received);
                span.read(received.stream_seq, stored_ms, &d.prev_hash, d.chain_hash());
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
    report.cuts = ends::judge(&spans, &heads, key.as_ref(), ages);
    Ok(report)
}

/// MAPEK_PLAN's configuration and state, as the server has them now.
pub(crate) async fn plan_info(
    js: &JetStream,
) -> Result<async_nats::jetstream::stream::Info, mapek_bus::BusError> {
    let failed = |e: String| mapek_bus::BusError::Stream {
        stream: Phase::Plan.stream().to_owned(),
        detail: e,
    };
    let mut stream = js
        .get_stream(Phase::Plan.stream())
        .await
        .map_err(|e| failed(e.to_string()))?;
    stream
        .info()
        .await
        .map_err(|e| failed(e.to_string()))
        .cloned()
}
