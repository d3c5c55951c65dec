//! The dead-letter queue: messages a consumer could not decode or validate.
//!
//! A dead letter keeps the reason, the subject, the stream sequence, the headers and the
//! original bytes (cut to 64 KiB), so nothing is lost and the bad input can be inspected,
//! fixed and published again. It is stored before the original delivery is terminated, so a
//! crash in between redelivers the message and dead-letters it again; the dead letter's id is
//! derived from the stream sequence, so the second copy is dropped as a duplicate.

use std::collections::BTreeMap;

use async_nats::jetstream::Message;
use mapek_codec::{KnownSchema, Registry, encode};
use mapek_domain::{Phase, Rejected};

use crate::{BusError, JetStream, headers};

/// Publishes [`Rejected`] events to `mapek.dlq.<phase>`.
#[derive(Clone)]
pub struct DeadLetters {
    js: JetStream,
}

impl DeadLetters {
    /// Dead letters go through `js`.
    pub fn new(js: JetStream) -> Self {
        Self { js }
    }

    /// Stores `message`, refused by a consumer of `phase` for `reason`, in the dead-letter
    /// stream, and waits until it is stored.
    pub async fn reject(
        &self,
        phase: Phase,
        message: &Message,
        reason: String,
    ) -> Result<Rejected, BusError> {
        let (seq, ts_ms) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
            ),
            Err(_) => (0, 0),
        };
        let mut kept = BTreeMap::new();
        if let Some(h) = &message.headers {
            for (name, values) in h.iter() {
                let value: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
                kept.insert(name.to_string(), value.join(", "));
            }
        }
        let rejected = Rejected::new(
            phase,
            message.subject.as_str(),
            seq,
            kept,
            &message.payload,
            reason,
            ts_ms,
        );
        self.store(&rejected).await?;
        Ok(rejected)
    }

    /// Stores a dead letter made elsewhere (a CLI that refused an input line, say).
    pub async fn store(&self, rejected: &Rejected) -> Result<(), BusError> {
        let subject = Phase::dlq_subject(rejected.phase.parse().unwrap_or(Phase::Dlq));
        let label = Registry::global()
            .latest("Rejected")
            .map(KnownSchema::label)
            .unwrap_or_default();
        let payload = encode(rejected)?;
        let failed = |e: String| BusError::Publish {
            subject: subject.clone(),
            detail: e,
        };
        self.js
            .publish_with_headers(
                subject.clone(),
                headers::for_event(rejected, label),
                payload.into(),
            )
            .await
            .map_err(|e| failed(e.to_string()))?
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(())
    }
}
