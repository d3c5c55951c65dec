//! Where a replay reads the log from: the live streams, or a slice file.
//!
//! Live, every stream is read by direct gets ([`mapek_bus::direct`]: no consumer, nothing
//! acknowledged) and the configuration from the `MAPEK_CONFIG` bucket the same way: a replay
//! creates nothing on the server and publishes nothing, so workers and subscribers see no
//! trace of it. A stream is read up to the last message it held when the read began.
//!
//! A phase may be stored in several streams (telemetry, when the server maps it into
//! partitions: `MAPEK_MONITOR_0` …, see [`mapek_bus::layout`]). They are read side by side and
//! merged as they are read, by stored time (the `merge` module), in a slice as live; each
//! partition lives in one stream, so its order is the order it was stored in either way.

use std::sync::Arc;

use mapek_bus::config_store::{self, RecordedConfig};
use mapek_bus::direct::Reader;
use mapek_bus::{BusError, JetStream, StartAt, layout};
use mapek_domain::{Phase, Telemetry};

use crate::merge::{earliest, merge, stream_key};
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

fn consumer_error(stream: &str, detail: String) -> ReplayError {
    ReplayError::Bus(BusError::Consumer {
        stream: stream.to_owned(),
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

    /// How many messages of `phase` there are to read (for progress), over all its streams.
    pub async fn count(&self, phase: Phase) -> Result<u64, ReplayError> {
        match self {
            Source::Live(js) => {
                let mut total = 0;
                for stored in layout::streams_of(js, phase).await? {
                    let Ok(mut stream) = js.get_stream(&stored.name).await else {
                        continue;
                    };
                    let info = stream
                        .info()
                        .await
                        .map_err(|e| consumer_error(&stored.name, e.to_string()))?;
                    total += info.state.messages;
                }
                Ok(total)
            }
            Source::Slice(s) => Ok(s.records.iter().filter(|r| stores(r, phase)).count() as u64),
        }
    }

    /// Calls `each` with every message of `phase` whose stored subject matches `filter`
    /// (`mapek.monitor.3.>`; every message if `None`), in stored order: each stream's own order,
    /// and several streams of the phase merged by stored time (the `merge` module). Only the
    /// streams that can hold what `filter` matches are read (one, for a filter naming a
    /// partition). Returns how many it read.
    pub async fn each(
        &self,
        phase: Phase,
        filter: Option<String>,
        mut each: impl FnMut(Record),
    ) -> Result<u64, ReplayError> {
        match self {
            Source::Live(js) => read_live(js, phase, filter, &mut each).await,
            Source::Slice(s) => {
                let mut streams: Vec<(&str, Vec<&Record>)> = Vec::new();
                for r in s.records.iter().filter(|r| stores(r, phase)) {
                    if !filter
                        .as_deref()
                        .is_none_or(|f| subject_matches(f, &r.subject))
                    {
                        continue;
                    }
                    match streams.iter_mut().find(|(name, _)| *name == r.stream) {
                        Some((_, records)) => records.push(r),
                        None => streams.push((&r.stream, vec![r])),
                    }
                }
                streams.sort_by(|a, b| stream_key(a.0).cmp(&stream_key(b.0)));
                let mut n = 0;
                merge(streams.into_iter().map(|(_, r)| r).collect(), |r| {
                    each(r.clone());
                    n += 1;
                });
                Ok(n)
            }
        }
    }

    /// The event time a bound stands for: a sequence of a telemetry stream means the event
    /// time of the telemetry stored there. A bare sequence ([`Bound::Seq`]) needs the
    /// telemetry to be in one stream (`MAPEK_MONITOR`); split over several, it is refused with
    /// the streams to name instead ([`Bound::StreamSeq`]).
    pub async fn resolve(&self, bound: Bound) -> Result<i64, ReplayError> {
        let (stream, seq) = match bound {
            Bound::Time(ms) => return Ok(ms),
            Bound::Seq(seq) => (self.only_monitor_stream(seq).await?, seq),
            Bound::StreamSeq { stream, seq } => {
                if layout::phase_of_stream(&stream) != Some(Phase::Monitor) {
                    return Err(ReplayError::Missing(format!(
                        "{stream}:{seq}: a bound names a sequence of a telemetry stream \
                         (MAPEK_MONITOR, MAPEK_MONITOR_<n>), or a time"
                    )));
                }
                (stream, seq)
            }
        };
        let missing = || {
            ReplayError::Missing(format!(
                "no telemetry at sequence {seq} of {stream} in {}: give a time instead, or a \
                 sequence the stream holds",
                self.name()
            ))
        };
        let record = match self {
            Source::Live(js) => {
                let Ok(found) = js.get_stream(&stream).await else {
                    return Err(missing());
                };
                let m = found.get_raw_message(seq).await.map_err(|_| missing())?;
                Record {
                    stream: stream.clone(),
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
                .find(|r| r.stream == stream && r.seq == seq)
                .cloned()
                .ok_or_else(missing)?,
        };
        let t: Telemetry = record.decode().map_err(|_| missing())?;
        Ok(t.ts_ms)
    }

    /// The one stream telemetry is stored in, which a bare sequence `seq` names; an error
    /// naming the streams if there are several.
    async fn only_monitor_stream(&self, seq: u64) -> Result<String, ReplayError> {
        let mut names: Vec<String> = match self {
            Source::Live(js) => layout::streams_of(js, Phase::Monitor)
                .await?
                .into_iter()
                .map(|s| s.name)
                .collect(),
            Source::Slice(s) => {
                let mut names: Vec<String> = Vec::new();
                for r in s.records.iter().filter(|r| stores(r, Phase::Monitor)) {
                    if !names.contains(&r.stream) {
                        names.push(r.stream.clone());
                    }
                }
                names.sort_by(|a, b| stream_key(a).cmp(&stream_key(b)));
                names
            }
        };
        match names.len() {
            0 => Ok(Phase::Monitor.stream().to_owned()),
            1 => Ok(names.remove(0)),
            _ => Err(ReplayError::Missing(format!(
                "sequence {seq} is ambiguous: telemetry in {} is stored in {} streams ({}), each \
                 with its own sequences. Give a time instead, or name the stream: {}:{seq}",
                self.name(),
                names.len(),
                names.join(", "),
                names[0]
            ))),
        }
    }
}

/// Whether `record` is stored in a stream of `phase` (`MAPEK_MONITOR` or `MAPEK_MONITOR_<n>`
/// for telemetry: slices of both layouts).
fn stores(record: &Record, phase: Phase) -> bool {
    layout::phase_of_stream(&record.stream) == Some(phase)
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

/// Reads `phase`'s streams that can hold what `filter` matches, merged in stored order.
async fn read_live(
    js: &JetStream,
    phase: Phase,
    filter: Option<String>,
    each: &mut dyn FnMut(Record),
) -> Result<u64, ReplayError> {
    let filter = filter.unwrap_or_else(|| phase.stored_filter(None));
    let mut streams = layout::streams_of(js, phase).await?;
    if let Some(p) = layout::partition_of(&filter) {
        streams.retain(|s| s.holds(p));
    }
    streams.sort_by(|a, b| stream_key(&a.name).cmp(&stream_key(&b.name)));
    let mut readers = Vec::with_capacity(streams.len());
    for stored in streams {
        // A server without the stream has nothing of it to replay.
        if let Some(reader) = LiveStream::open(js, &stored.name, &filter).await? {
            readers.push(reader);
        }
    }
    let mut heads = Vec::with_capacity(readers.len());
    for reader in &mut readers {
        heads.push(reader.next().await?);
    }
    let mut n = 0;
    while let Some(i) = earliest(&heads) {
        let next = readers[i].next().await?;
        if let Some(record) = std::mem::replace(&mut heads[i], next) {
            each(record);
            n += 1;
        }
    }
    Ok(n)
}

/// One stream read by direct gets, up to the last message it held when opened.
struct LiveStream {
    reader: Reader,
    /// The stream's last sequence when the read began: later messages are not read.
    last: u64,
}

impl LiveStream {
    /// Opens `name` through `filter`; `None` if the stream does not exist or holds nothing.
    async fn open(js: &JetStream, name: &str, filter: &str) -> Result<Option<Self>, ReplayError> {
        let Some(reader) = Reader::open_existing(js, name, filter, StartAt::All).await? else {
            return Ok(None);
        };
        let last = reader.last_at_open();
        Ok((last > 0).then_some(Self { reader, last }))
    }

    /// The next record, or `None` at the end.
    async fn next(&mut self) -> Result<Option<Record>, ReplayError> {
        let Some(stored) = self.reader.next_through(self.last).await? else {
            return Ok(None);
        };
        Ok(Some(Record {
            stream: stored.stream.to_string(),
            seq: stored.seq,
            subject: stored.subject,
            stored_ms: to_ms(stored.stored),
            headers: stored.headers,
            body: stored.payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use mapek_bus::config_store::RecordedConfig;
    use mapek_domain::NodeId;

    use super::*;
    use crate::slice::SliceHeader;

    /// Telemetry of `node` at `ts_ms`, stored in `stream` at `seq` and `stored_ms`.
    fn telemetry(stream: &str, seq: u64, stored_ms: i64, node: &str, ts_ms: i64) -> Record {
        let node = NodeId::new(node).unwrap();
        let partition = layout::partition_of_node(&node, 8);
        let t = Telemetry::new(node.clone(), ts_ms, [("cpu".to_owned(), 0.5)].into());
        Record {
            stream: stream.to_owned(),
            seq,
            subject: format!("mapek.monitor.{partition}.{node}"),
            stored_ms,
            headers: None,
            body: mapek_codec::encode(&t).unwrap().into(),
        }
    }

    fn slice(records: Vec<Record>) -> Source {
        let header = SliceHeader::new(&RecordedConfig::default(), Range::ALL, None, 0);
        Source::Slice(Arc::new(Slice { header, records }))
    }

    /// A node whose partition is in `partitions`.
    fn node_in(partitions: std::ops::Range<u32>) -> String {
        (0..)
            .map(|i| format!("n{i}"))
            .find(|n| partitions.contains(&layout::partition_of_node(&NodeId::new(n).unwrap(), 8)))
            .unwrap()
    }

    /// Two nodes, one in each monitor stream of the split layout.
    fn split_slice() -> Source {
        let (zero, one) = (node_in(0..4), node_in(4..8));
        slice(vec![
            // Written one stream after the other, as an older export of several would be.
            telemetry("MAPEK_MONITOR_1", 1, 100, &one, 1_000),
            telemetry("MAPEK_MONITOR_1", 2, 300, &one, 3_000),
            telemetry("MAPEK_MONITOR_0", 1, 100, &zero, 1_000),
            telemetry("MAPEK_MONITOR_0", 2, 200, &zero, 2_000),
            telemetry("MAPEK_MONITOR_0", 3, 300, &zero, 3_000),
        ])
    }

    async fn read(source: &Source, filter: Option<&str>) -> Vec<(String, u64)> {
        let mut got = Vec::new();
        let n = source
            .each(Phase::Monitor, filter.map(str::to_owned), |r| {
                got.push((r.stream, r.seq))
            })
            .await
            .unwrap();
        assert_eq!(n, got.len() as u64);
        got
    }

    #[tokio::test]
    async fn a_slice_of_split_telemetry_is_read_merged_by_stored_time() {
        let source = split_slice();
        let s = |name: &str, seq| (name.to_owned(), seq);
        assert_eq!(
            read(&source, None).await,
            [
                s("MAPEK_MONITOR_0", 1),
                s("MAPEK_MONITOR_1", 1),
                s("MAPEK_MONITOR_0", 2),
                s("MAPEK_MONITOR_0", 3),
                s("MAPEK_MONITOR_1", 2),
            ]
        );
        let one = node_in(4..8);
        let filter = format!(
            "mapek.monitor.{}.>",
            layout::partition_of_node(&NodeId::new(&one).unwrap(), 8)
        );
        assert_eq!(
            read(&source, Some(&filter)).await,
            [s("MAPEK_MONITOR_1", 1), s("MAPEK_MONITOR_1", 2)]
        );
        assert_eq!(source.count(Phase::Monitor).await.unwrap(), 5);
        assert_eq!(source.count(Phase::Analyze).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_sequence_of_split_telemetry_needs_its_stream() {
        let source = split_slice();
        let err = source.resolve(Bound::Seq(2)).await.unwrap_err().to_string();
        assert!(
            err.contains("ambiguous") && err.contains("MAPEK_MONITOR_0:2"),
            "{err}"
        );
        let at = |stream: &str| Bound::StreamSeq {
            stream: stream.to_owned(),
            seq: 2,
        };
        assert_eq!(source.resolve(at("MAPEK_MONITOR_0")).await.unwrap(), 2_000);
        assert_eq!(source.resolve(at("MAPEK_MONITOR_1")).await.unwrap(), 3_000);
        assert!(source.resolve(at("MAPEK_PLAN")).await.is_err());
    }

    #[tokio::test]
    async fn a_sequence_of_one_telemetry_stream_is_its_own() {
        let source = slice(vec![
            telemetry("MAPEK_MONITOR", 1, 100, "n1", 1_000),
            telemetry("MAPEK_MONITOR", 2, 200, "n2", 2_000),
        ]);
        assert_eq!(source.resolve(Bound::Seq(2)).await.unwrap(), 2_000);
        assert_eq!(read(&source, None).await.len(), 2);
    }
}
