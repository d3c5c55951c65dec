//! Where a replay reads the log from: the live streams, or a slice file.
//!
//! Live, every stream is read through an ordered consumer (ephemeral, never acknowledging,
//! deleted when dropped) and the configuration through the `MAPEK_CONFIG` bucket: a replay
//! creates no durable state and publishes nothing, so workers and subscribers see no trace of
//! it. A stream is read up to the last message it held when the read began.

use std::sync::Arc;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use mapek_bus::config_store::{self, RecordedConfig};
use mapek_bus::{BusError, JetStream};
use mapek_domain::{Phase, Telemetry};

use crate::record::Record;
use crate::slice::Slice;
use crate::{Bound, Range, ReplayError};

/// The log a replay reads.
#[derive(Clone)]
pub enum Source {
    /// The streams of a running server.
    Live(Box<JetStream>),
    /// A slice file, read into memory.
    Slice(Arc<Slice>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

fn consumer_error(phase: Phase, detail: String) -> ReplayError {
    ReplayError::Bus(BusError::Consumer {
        stream: phase.stream().to_owned(),
        detail,
    })
}

impl Source {
    /// The streams of the server `js` is connected to.
    pub fn live(js: JetStream) -> Self {
        Self::Live(Box::new(js))
    }

    /// The slice file at `path`.
    pub fn file(path: &std::path::Path) -> Result<Self, ReplayError> {
        Ok(Self::Slice(Arc::new(Slice::open(path)?)))
    }

    /// What to call it in messages.
    pub fn name(&self) -> String {
        match self {
            Source::Live(_) => "the live streams".to_owned(),
            Source::Slice(s) => format!("a slice exported at {} ms", s.header.exported_ms),
        }
    }

    /// The range a slice was exported for; the whole log when live.
    pub fn default_range(&self) -> Range {
        match self {
            Source::Live(_) => Range::ALL,
            Source::Slice(s) => s.header.range,
        }
    }

    /// The policies and analyze configurations the workers recorded.
    pub async fn config(&self) -> Result<RecordedConfig, ReplayError> {
        match self {
            Source::Live(js) => Ok(config_store::read(js).await?),
            Source::Slice(s) => Ok(s.header.config()),
        }
    }

    /// How many messages of `phase` there are to read (for progress).
    pub async fn count(&self, phase: Phase) -> Result<u64, ReplayError> {
        match self {
            Source::Live(js) => {
                let Ok(mut stream) = js.get_stream(phase.stream()).await else {
                    return Ok(0);
                };
                let info = stream
                    .info()
                    .await
                    .map_err(|e| consumer_error(phase, e.to_string()))?;
                Ok(info.state.messages)
            }
            Source::Slice(s) => Ok(s
                .records
                .iter()
                .filter(|r| r.stream == phase.stream())
                .count() as u64),
        }
    }

    /// Calls `each` with every message of `phase`'s stream whose stored subject matches
    /// `filter` (`mapek.monitor.3.>`; every message if `None`), in stream order. Returns how
    /// many it read.
    pub async fn each(
        &self,
        phase: Phase,
        filter: Option<String>,
        mut each: impl FnMut(Record),
    ) -> Result<u64, ReplayError> {
        match self {
            Source::Live(js) => read_live(js, phase, filter, &mut each).await,
            Source::Slice(s) => {
                let mut n = 0;
                for r in s.records.iter().filter(|r| r.stream == phase.stream()) {
                    if filter
                        .as_deref()
                        .is_none_or(|f| subject_matches(f, &r.subject))
                    {
                        each(r.clone());
                        n += 1;
                    }
                }
                Ok(n)
            }
        }
    }

    /// The event time a bound stands for: a sequence of `MAPEK_MONITOR` means the event time
    /// of the telemetry stored there.
    pub async fn resolve(&self, bound: Bound) -> Result<i64, ReplayError> {
        let seq = match bound {
            Bound::Time(ms) => return Ok(ms),
            Bound::Seq(seq) => seq,
        };
        let missing = || {
            ReplayError::Missing(format!(
                "no telemetry at sequence {seq} of MAPEK_MONITOR in {}: give a time instead, \
                 or a sequence the stream holds",
                self.name()
            ))
        };
        let record = match self {
            Source::Live(js) => {
                let stream = js
                    .get_stream(Phase::Monitor.stream())
                    .await
                    .map_err(|e| consumer_error(Phase::Monitor, e.to_string()))?;
                let m = stream.get_raw_message(seq).await.map_err(|_| missing())?;
                Record {
                    stream: Phase::Monitor.stream().to_owned(),
                    seq,
                    subject: m.subject.to_string(),
                    stored_ms: to_ms(m.time),
                    headers: Some(m.headers),
                    body: m.payload,
                }
            }
            Source::Slice(s) => s
                .records
                .iter()
                .find(|r| r.stream == Phase::Monitor.stream() && r.seq == seq)
                .cloned()
                .ok_or_else(missing)?,
        };
        let t: Telemetry = record.decode().map_err(|_| missing())?;
        Ok(t.ts_ms)
    }
}

/// Whether a NATS subject filter (`*` one token, `>` the rest) matches `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn to_ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

async fn read_live(
    js: &JetStream,
    phase: Phase,
    filter: Option<String>,
    each: &mut dyn FnMut(Record),
) -> Result<u64, ReplayError> {
    // A server without the stream has nothing of it to replay.
    let Ok(mut stream) = js.get_stream(phase.stream()).await else {
        return Ok(0);
    };
    let info = stream
        .info()
        .await
        .map_err(|e| consumer_error(phase, e.to_string()))?;
    let last = info.state.last_sequence;
    if info.state.messages == 0 {
        return Ok(0);
    }
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.unwrap_or_else(|| phase.stored_filter(None)),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| consumer_error(phase, e.to_string()))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| consumer_error(phase, e.to_string()))?
        .num_pending;
    if pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| consumer_error(phase, e.to_string()))?;
    let mut n = 0;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| consumer_error(phase, e.to_string()))?;
        let (seq, stored, pending) = match message.info() {
            Ok(i) => (i.stream_sequence, to_ms(i.published), i.pending),
            Err(e) => return Err(consumer_error(phase, e.to_string())),
        };
        if seq > last {
            break;
        }
        let message = message.message;
        each(Record {
            stream: phase.stream().to_owned(),
            seq,
            subject: message.subject.to_string(),
            stored_ms: stored,
            headers: message.headers,
            body: message.payload,
        });
        n += 1;
        if seq == last || pending == 0 {
            break;
        }
    }
    Ok(n)
}
