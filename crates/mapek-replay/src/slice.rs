//! The slice file: a part of the log, portable, for a replay elsewhere.
//!
//! JSON Lines. The first line is a [`SliceHeader`]: the format's name and version, the
//! range, the policies and analyze configurations the workers ran with. Every other line is
//! one stored message ([`SliceLine`]): its stream, sequence, subject, store time, headers, and
//! its body in base64, byte for byte, so a replay of the slice decodes exactly what the
//! workers decoded. docs/replay.md describes each field.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use async_nats::HeaderMap;
use mapek_bus::config_store::{Change, RecordedConfig};
use mapek_domain::AnalyzeConfig;
use serde::{Deserialize, Serialize};

use crate::record::{Record, base64_decode, base64_encode};
use crate::{Range, ReplayError};

/// The format's name, the header's `format`.
pub const FORMAT: &str = "mapek-slice";
/// The format's version, the header's `version`.
pub const VERSION: u32 = 1;

/// The first line of a slice.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceHeader {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`]; a reader refuses versions it does not know.
    pub version: u32,
    /// When it was exported, in milliseconds since the Unix epoch.
    pub exported_ms: i64,
    /// The event-time range asked for: replays of the slice compare this range by default.
    /// The slice holds everything before it too, which the replay needs to rebuild state.
    pub range: Range,
    /// The node asked for, if any: the slice then holds that node's whole partition.
    pub node: Option<String>,
    /// The partitions the slice holds, or `None` for all of them.
    pub partitions: Option<Vec<u32>>,
    /// Policy file texts, by SHA-256 hash.
    pub policies: BTreeMap<String, String>,
    /// Analyze configurations, by hash.
    pub analyze: BTreeMap<String, AnalyzeConfig>,
    /// The policies in force, oldest first: `[hash, since_ms]`.
    pub policy_history: Vec<(String, i64)>,
    /// The analyze configurations in force, oldest first: `[hash, since_ms]`.
    pub analyze_history: Vec<(String, i64)>,
    /// How many lines of each stream follow.
    pub counts: BTreeMap<String, u64>,
}

impl SliceHeader {
    /// The recorded configuration this slice carries.
    pub fn config(&self) -> RecordedConfig {
        let changes = |h: &[(String, i64)]| {
            h.iter()
                .map(|(hash, since_ms)| Change {
                    hash: hash.clone(),
                    since_ms: *since_ms,
                })
                .collect()
        };
        RecordedConfig {
            policies: self.policies.clone(),
            analyze: self.analyze.clone(),
            policy_history: changes(&self.policy_history),
            analyze_history: changes(&self.analyze_history),
        }
    }

    /// A header for `config`, with no counts yet.
    pub fn new(
        config: &RecordedConfig,
        range: Range,
        node: Option<String>,
        exported_ms: i64,
    ) -> Self {
        let pairs = |h: &[Change]| h.iter().map(|c| (c.hash.clone(), c.since_ms)).collect();
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            exported_ms,
            range,
            node,
            partitions: None,
            policies: config.policies.clone(),
            analyze: config.analyze.clone(),
            policy_history: pairs(&config.policy_history),
            analyze_history: pairs(&config.analyze_history),
            counts: BTreeMap::new(),
        }
    }
}

/// One stored message, one line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceLine {
    /// The stream (`MAPEK_MONITOR`; `MAPEK_MONITOR_1` from a server that splits telemetry over
    /// several streams).
    pub stream: String,
    /// The stream sequence.
    pub seq: u64,
    /// The stored subject (`mapek.monitor.3.n17`).
    pub subject: String,
    /// When the server stored it, ms since the Unix epoch.
    pub stored_ms: i64,
    /// Headers as `[name, value]` pairs, in the order stored; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The body, standard base64 with padding.
    pub body: String,
}

impl SliceLine {
    /// The line for `record`.
    pub fn from_record(record: &Record) -> Self {
        let mut headers = Vec::new();
        if let Some(h) = &record.headers {
            for (name, values) in h.iter() {
                for v in values {
                    headers.push((name.to_string(), v.as_str().to_owned()));
                }
            }
        }
        // HeaderMap iterates in hash order: sort so the same message writes the same line.
        headers.sort();
        Self {
            stream: record.stream.clone(),
            seq: record.seq,
            subject: record.subject.clone(),
            stored_ms: record.stored_ms,
            headers,
            body: base64_encode(&record.body),
        }
    }

    /// The record this line holds, or why not.
    pub fn into_record(self) -> Result<Record, String> {
        let body = base64_decode(&self.body).ok_or("the body is not base64")?;
        let headers = (!self.headers.is_empty()).then(|| {
            let mut map = HeaderMap::new();
            for (name, value) in &self.headers {
                map.append(name.as_str(), value.as_str());
            }
            map
        });
        Ok(Record {
            stream: self.stream,
            seq: self.seq,
            subject: self.subject,
            stored_ms: self.stored_ms,
            headers,
            body: body.into(),
        })
    }
}

/// A slice read into memory.
#[derive(Clone, Debug)]
pub struct Slice {
    /// Its first line.
    pub header: SliceHeader,
    /// Every message, in file order (each stream's in its stream order; telemetry of several
    /// streams merged by stored time, or one stream after another in older slices).
    pub records: Vec<Record>,
}

impl Slice {
    /// Reads a slice from `reader`; `file` names it in errors.
    pub fn read(file: &str, reader: impl BufRead) -> Result<Self, ReplayError> {
        let bad = |line: usize, detail: String| ReplayError::Slice {
            file: file.to_owned(),
            detail: format!("line {line}: {detail}"),
        };
        let mut lines = reader.lines();
        let first = lines
            .next()
            .ok_or_else(|| {
                bad(
                    1,
                    "the file is empty; a slice starts with a header line".into(),
                )
            })?
            .map_err(|e| bad(1, e.to_string()))?;
        let header: SliceHeader = serde_json::from_str(&first)
            .map_err(|e| bad(1, format!("not a {FORMAT} header ({e})")))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(bad(
                1,
                format!(
                    "format {} version {}, but this mapek reads {FORMAT} version {VERSION}",
                    header.format, header.version
                ),
            ));
        }
        let mut records = Vec::new();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let line = line.map_err(|e| bad(n, e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: SliceLine =
                serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
            records.push(parsed.into_record().map_err(|e| bad(n, e))?);
        }
        Ok(Self { header, records })
    }

    /// Reads the slice file at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, ReplayError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| ReplayError::Slice {
            file: name.clone(),
            detail: format!("cannot open it: {e}"),
        })?;
        Self::read(&name, std::io::BufReader::new(file))
    }
}

/// Writes `header`, then `records`, as a slice.
pub fn write(
    writer: &mut dyn Write,
    header: &SliceHeader,
    records: &[Record],
) -> Result<(), ReplayError> {
    let failed = |e: std::io::Error| ReplayError::Write {
        what: "the slice".into(),
        detail: e.to_string(),
    };
    let header = serde_json::to_string(header).map_err(|e| ReplayError::Write {
        what: "the slice header".into(),
        detail: e.to_string(),
    })?;
    writeln!(writer, "{header}").map_err(failed)?;
    for r in records {
        write_line(writer, r)?;
    }
    writer.flush().map_err(failed)
}

/// Writes one record as a slice line.
pub fn write_line(writer: &mut dyn Write, record: &Record) -> Result<(), ReplayError> {
    let line =
        serde_json::to_string(&SliceLine::from_record(record)).map_err(|e| ReplayError::Write {
            what: "a slice line".into(),
            detail: e.to_string(),
        })?;
    writeln!(writer, "{line}").map_err(|e| ReplayError::Write {
        what: "the slice".into(),
        detail: e.to_string(),
    })
}
