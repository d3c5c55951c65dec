//! `mapek audit verify`: the whole plan stream through a [`Chain`].

use mapek_bus::{JetStream, StartAt, Subscriber};
use mapek_domain::Decision;

use crate::{AuditError, Broken, Chain, VerifyingKey};

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
}

/// The chain a stored plan subject's decision belongs to: its partition
/// (`mapek.plan.<p>.<node>`), or 0 for a subject without one (a stream without the partition
/// transform).
pub fn chain_of(subject: &str) -> u32 {
    mapek_bus::layout::partition_of(subject).unwrap_or(0)
}

/// Reads MAPEK_PLAN from the start to its current end and checks every decision: the
/// signature with `key` (links only, without), and each partition's chain.
pub async fn verify_stream(
    js: &JetStream,
    key: Option<VerifyingKey>,
) -> Result<AuditReport, AuditError> {
    let mut chain = Chain::new(key);
    let mut report = AuditReport::default();
    let mut decisions = Subscriber::<Decision>::open_subject(
        js,
        mapek_domain::Phase::Plan.stored_filter(None),
        StartAt::All,
    )
    .await?;
    if decisions.pending_at_start() == 0 {
        return Ok(report);
    }
    while let Some(received) = decisions.next().await {
        let received = received?;
        report.decisions += 1;
        let outcome = match &received.event {
            Ok(d) => chain
                .check(chain_of(&received.subject), d)
                .map_err(|b: Broken| (d.decision_id.clone(), b.to_string())),
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
        if received.pending == 0 {
            break;
        }
    }
    report.partitions = chain.partitions();
    Ok(report)
}
