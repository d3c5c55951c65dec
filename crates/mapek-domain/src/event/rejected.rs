//! Rejected: a message a consumer could not decode or validate, kept with the reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Event, non_empty};
use crate::{EventId, Invalid, NodeId, Phase};

/// The most bytes of the original message a [`Rejected`] keeps; the rest is cut, and
/// `original_len` says how long it was. A 2 MiB message must not make a 2 MiB dead letter.
pub const MAX_KEPT_BYTES: usize = 64 * 1024;

/// A dead letter, published on `mapek.dlq.<phase>`. Schema `Rejected`, version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    /// Deterministic from the stream and sequence it came from, so dead-lettering a
    /// redelivered message twice stores it once.
    pub rejected_id: String,
    /// The phase whose consumer refused it (`monitor`, …).
    pub phase: String,
    /// The subject it was stored under.
    pub subject: String,
    /// The stream sequence it was stored at (0 if it did not come from a stream).
    pub stream_seq: i64,
    /// Why it was refused, in one readable sentence.
    pub reason: String,
    /// Its headers.
    pub headers: BTreeMap<String, String>,
    /// Its body, cut to [`MAX_KEPT_BYTES`].
    #[serde(with = "serde_bytes")]
    pub original: Vec<u8>,
    /// The length of the whole body.
    pub original_len: i64,
    /// When it was rejected, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Which node the rejected message was about, as far as its subject tells; the
    /// placeholder `unknown` when it does not.
    pub node: NodeId,
}

impl Rejected {
    /// A dead letter for `body` stored at `subject` and `stream_seq`, refused by the consumer of
    /// `phase` for `reason`.
    pub fn new(
        phase: Phase,
        subject: &str,
        stream_seq: u64,
        headers: BTreeMap<String, String>,
        body: &[u8],
        reason: String,
        ts_ms: i64,
    ) -> Self {
        let node = subject
            .rsplit('.')
            .next()
            .and_then(|last| NodeId::new(last).ok())
            .unwrap_or_else(|| NodeId::new("unknown").expect("a valid id"));
        let rejected_id = EventId::builder("rejected")
            .str(phase.token())
            .str(subject)
            .i64(stream_seq as i64)
            .part(body)
            .finish();
        Self {
            rejected_id,
            phase: phase.token().to_owned(),
            subject: subject.to_owned(),
            stream_seq: stream_seq as i64,
            reason,
            headers,
            original: body[..body.len().min(MAX_KEPT_BYTES)].to_vec(),
            original_len: body.len() as i64,
            ts_ms,
            node,
        }
    }
}

impl Event for Rejected {
    const SCHEMA: &'static str = "Rejected";
    const PHASE: Phase = Phase::Dlq;

    fields!(id: rejected_id);

    fn validate(&self) -> Result<(), Invalid> {
        non_empty("rejected_id", &self.rejected_id)?;
        non_empty("reason", &self.reason)?;
        Ok(())
    }
}
