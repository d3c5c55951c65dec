//! The stream definitions of `streams/`, and applying them to a server.
//!
//! A definition is the JetStream API's JSON for a stream config. Applying compares only the
//! keys a definition names with what the server has, so a server default that the file does
//! not mention never counts as a change, and a second apply changes nothing.
//!
//! Telemetry is stored in one of two layouts ([`crate::layout`]): when the server maps
//! `mapek.monitor.<node>` into partitions itself, `MAPEK_MONITOR`'s definition is split into
//! `MAPEK_MONITOR_0` … (a share of the partitions each, no transform); otherwise it is applied
//! as written. [`apply`] finds out which with a probe that no stream stores.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::CreateStreamError;
use async_nats::jetstream::stream::Config;
use mapek_domain::Phase;
use serde_json::{Map, Value};

use crate::layout;
pub use crate::layout::DEFAULT_MONITOR_STREAMS;
use crate::{BusError, JetStream};

/// The definitions in `streams/`, compiled in.
const BUILTIN: &[(&str, &str)] = &[
    (
        "MAPEK_MONITOR.json",
        include_str!("../../../streams/MAPEK_MONITOR.json"),
    ),
    (
        "MAPEK_ANALYZE.json",
        include_str!("../../../streams/MAPEK_ANALYZE.json"),
    ),
    (
        "MAPEK_PLAN.json",
        include_str!("../../../streams/MAPEK_PLAN.json"),
    ),
    (
        "MAPEK_EXECUTE.json",
        include_str!("../../../streams/MAPEK_EXECUTE.json"),
    ),
    (
        "MAPEK_KNOWLEDGE.json",
        include_str!("../../../streams/MAPEK_KNOWLEDGE.json"),
    ),
    (
        "MAPEK_SHADOW.json",
        include_str!("../../../streams/MAPEK_SHADOW.json"),
    ),
    (
        "MAPEK_DLQ.json",
        include_str!("../../../streams/MAPEK_DLQ.json"),
    ),
];

/// One stream definition.
#[derive(Clone, Debug)]
pub struct StreamDef {
    /// Where it came from, for messages.
    pub file: String,
    /// The config, as the client sends it.
    pub config: Config,
    /// The keys the file names, normalised through the client's own serialisation.
    wanted: Map<String, Value>,
}

impl StreamDef {
    /// Parses a definition from its JSON text.
    pub fn parse(file: &str, text: &str) -> Result<Self, BusError> {
        let bad = |detail: String| BusError::Definition {
            file: file.to_owned(),
            detail,
        };
        let raw: Map<String, Value> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        // The client's Config wants some keys a definition may leave out: start from its
        // defaults and lay the file's keys over them.
        let mut full = to_map(&Config::default());
        full.extend(raw.clone());
        let config: Config =
            serde_json::from_value(Value::Object(full)).map_err(|e| bad(e.to_string()))?;
        if config.name.is_empty() {
            return Err(bad("has no \"name\"".into()));
        }
        let normalised = to_map(&config);
        let mut wanted = Map::new();
        for key in raw.keys() {
            match normalised.get(key) {
                Some(value) => wanted.insert(key.clone(), value.clone()),
                None if is_empty(&raw[key]) => None,
                None => return Err(bad(format!("unknown key {key:?}"))),
            };
        }
        Ok(Self {
            file: file.to_owned(),
            config,
            wanted,
        })
    }

    /// The same definition with `replicas` copies of each message (3 on a 3-node cluster,
    /// so a stream survives the loss of one node).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.config.num_replicas = replicas;
        self.wanted
            .insert("num_replicas".to_owned(), Value::from(replicas));
        self
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The same definition mapping its subjects into `partitions` partitions, when it maps
    /// them at all (the dead letters are not partitioned).
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        let Some(transform) = self.config.subject_transform.as_mut() else {
            return self;
        };
        transform.destination = layout::with_partitions(&transform.destination, partitions);
        if let Ok(value) = serde_json::to_value(&*transform) {
            self.wanted.insert("subject_transform".to_owned(), value);
        }
        self
    }

    /// The monitor stream `index` of `count` in the mapped layout, made from this (the
    /// `MAPEK_MONITOR`) definition: named `MAPEK_MONITOR_<index>`, taking the stored subjects
    /// of its share of `partitions` as they come from the server's mapping, with no transform.
    fn monitor_share(
        &self,
        index: usize,
        count: usize,
        partitions: &[u32],
    ) -> Result<StreamDef, BusError> {
        let mut raw = self.wanted.clone();
        raw.remove("subject_transform");
        let name = layout::monitor_stream(index);
        raw.insert("name".into(), Value::from(name.clone()));
        let subjects: Vec<Value> = partitions
            .iter()
            .map(|p| Value::from(format!("mapek.monitor.{p}.*")))
            .collect();
        raw.insert("subjects".into(), Value::from(subjects));
        let runs = runs(partitions);
        raw.insert(
            "description".into(),
            Value::from(format!(
                "Node telemetry of partitions {runs}, as the server maps mapek.monitor.<node> \
                 (one of {count} monitor streams)."
            )),
        );
        let text = Value::Object(raw).to_string();
        StreamDef::parse(&format!("{} (partitions {runs})", self.file), &text)
    }

    /// The keys whose value on the server differs from this definition, sorted.
    fn differences(&self, current: &Config) -> Vec<String> {
        let current = to_map(current);
        self.wanted
            .iter()
            .filter(|(key, want)| current.get(*key).unwrap_or(&Value::Null) != *want)
            .map(|(key, _)| key.clone())
            .collect()
    }
}

/// Ascending partitions as runs: `0-3, 8-11`.
fn runs(partitions: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &p in partitions {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == p => *last = p,
            _ => runs.push((p, p)),
        }
    }
    let run = |&(first, last): &(u32, u32)| match first == last {
        true => first.to_string(),
        false => format!("{first}-{last}"),
    };
    runs.iter().map(run).collect::<Vec<_>>().join(", ")
}

fn to_map(config: &Config) -> Map<String, Value> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
    }
}

/// The definitions compiled in from `streams/`.
pub fn builtin() -> Vec<StreamDef> {
    BUILTIN
        .iter()
        .map(|(file, text)| StreamDef::parse(file, text).expect("streams/ definitions parse"))
        .collect()
}

/// The definitions in every `*.json` file of `dir`, in file name order.
pub fn load_dir(dir: &Path) -> Result<Vec<StreamDef>, BusError> {
    let unreadable = |detail: String| BusError::Definition {
        file: dir.display().to_string(),
        detail,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| unreadable(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(unreadable("has no .json stream definitions".into()));
    }
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| BusError::Definition {
                file: path.display().to_string(),
                detail: e.to_string(),
            })?;
            StreamDef::parse(&path.display().to_string(), &text)
        })
        .collect()
}

/// What applying one definition did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The stream did not exist and was created.
    Created {
        /// The stream.
        name: String,
    },
    /// The stream existed with other settings; these keys were updated.
    Updated {
        /// The stream.
        name: String,
        /// The keys that changed.
        changed: Vec<String>,
    },
    /// The stream already matched its definition.
    Unchanged {
        /// The stream.
        name: String,
    },
    /// An empty stream of the other layout was deleted (`MAPEK_MONITOR`, when the server
    /// now maps telemetry into partitions).
    Deleted {
        /// The stream.
        name: String,
    },
}

impl Applied {
    /// The stream (or bucket) it is about.
    pub fn name(&self) -> &str {
        match self {
            Applied::Created { name }
            | Applied::Updated { name, .. }
            | Applied::Unchanged { name }
            | Applied::Deleted { name } => name,
        }
    }

    /// Whether anything changed on the server.
    pub fn changed(&self) -> bool {
        !matches!(self, Applied::Unchanged { .. })
    }
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Created { name } => write!(f, "{name}: created"),
            Applied::Updated { name, changed } => {
                write!(f, "{name}: updated {}", changed.join(", "))
            }
            Applied::Unchanged { name } => write!(f, "{name}: unchanged"),
            Applied::Deleted { name } => write!(
                f,
                "{name}: deleted (it was empty; telemetry goes to the monitor streams)"
            ),
        }
    }
}

/// How the server has the phases stored: how many partitions, and telemetry's streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// No mapping on the server: one `MAPEK_MONITOR` whose transform partitions telemetry.
    Single {
        /// The partitions of every phase.
        partitions: u32,
    },
    /// The server maps telemetry into partitions: monitor streams share them.
    Split {
        /// The partitions of every phase.
        partitions: u32,
        /// How many partitions the server maps telemetry into now: `partitions`, or a count
        /// it is a multiple of while the streams are grown before the mapping.
        mapped: u32,
        /// The partitions each monitor stream holds, `MAPEK_MONITOR_0`'s first.
        shares: Vec<Vec<u32>>,
    },
}

impl Layout {
    /// The partitions of every phase.
    pub fn partitions(&self) -> u32 {
        match self {
            Layout::Single { partitions } | Layout::Split { partitions, .. } => *partitions,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Single { partitions } => write!(
                f,
                "partitions: {partitions}; telemetry: one stream, MAPEK_MONITOR (the server \
                 does not map mapek.monitor.<node> into partitions; see docs/adr/0012)"
            ),
            Layout::Split {
                partitions,
                mapped,
                shares,
            } => write!(
                f,
                "partitions: {partitions}; telemetry: the server maps it into {mapped} \
                 partitions, stored in {} streams (MAPEK_MONITOR_0 to MAPEK_MONITOR_{})",
                shares.len(),
                shares.len() - 1
            ),
        }
    }
}

/// The node ids of the probes: not ones a node may take by accident, and whose partitions
/// tell every count from 1 to [`layout::MAX_PARTITIONS`] apart.
fn probes() -> Vec<String> {
    (0..16)
        .map(|i| format!("_mapek-probe-{i:02}-of-partitions"))
        .collect()
}

/// The one partition count under which each probe's hash gives the partition the server put
/// it in, or `None` if there is none (a mapping of another kind) or more than one.
fn count_from_answers(answers: &[(String, u32)]) -> Option<u32> {
    let mut fitting = (1..=layout::MAX_PARTITIONS).filter(|&count| {
        answers
            .iter()
            .all(|(probe, p)| layout::fnv1a(probe) % count == *p)
    });
    let count = fitting.next()?;
    fitting.next().is_none().then_some(count)
}

/// Into how many partitions the server maps telemetry, or `None` if it does not map it: a
/// core message published to `mapek.monitor.<probe>` comes back on
/// `mapek.monitor.<partition>.<probe>` if it does, and the partitions of the probes name the
/// count. The probes carry an expected stream no stream has, so no stream stores them.
pub async fn server_mapping(js: &JetStream) -> Result<Option<u32>, BusError> {
    let probes = probes();
    let client = js.client();
    let mut answers = subscribe_to_probes(&client, &probes).await?;
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        publish_probes(&client, &probes).await?;
        read_probes(&mut answers, &probes).await
    })
    .await;
    for sub in answers.iter_mut() {
        let _ = sub.unsubscribe().await;
    }
    match waited {
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(found))) => count_from_answers(&found).map(Some).ok_or_else(|| {
            probe_failed(format!(
                "it maps mapek.monitor.<node> in a way mapek does not know; map it with \
                 {{{{partition(N,1)}}}}, N from 1 to {}, as deploy/nats/mapping.conf does",
                layout::MAX_PARTITIONS
            ))
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(probe_failed(
            "probes published to mapek.monitor.<probe> did not all come back within 5 s (may \
             this user subscribe to mapek.monitor.>?)"
                .to_owned(),
        )),
    }
}

/// The error of a probe of the server's mapping that went wrong.
fn probe_failed(detail: String) -> BusError {
    BusError::Stream {
        stream: Phase::Monitor.stream().to_owned(),
        detail: format!("cannot tell whether the server maps telemetry into partitions: {detail}"),
    }
}

/// Subscriptions to each probe as the server would map it, and to the first as published.
async fn subscribe_to_probes(
    client: &async_nats::Client,
    probes: &[String],
) -> Result<futures::stream::SelectAll<async_nats::Subscriber>, BusError> {
    let mut answers = futures::stream::SelectAll::new();
    let mapped = probes.iter().map(|p| format!("mapek.monitor.*.{p}"));
    for subject in mapped.chain([format!("mapek.monitor.{}", probes[0])]) {
        let sub = client.subscribe(subject).await;
        answers.push(sub.map_err(|e| probe_failed(e.to_string()))?);
    }
    Ok(answers)
}

/// Publishes the probes, to be stored by no stream.
async fn publish_probes(client: &async_nats::Client, probes: &[String]) -> Result<(), BusError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_STREAM,
        "MAPEK_LAYOUT_PROBE_NOT_A_STREAM",
    );
    for probe in probes {
        let subject = format!("mapek.monitor.{probe}");
        let published = client.publish_with_headers(subject, headers.clone(), Default::default());
        published.await.map_err(|e| probe_failed(e.to_string()))?;
    }
    client
        .flush()
        .await
        .map_err(|e| probe_failed(e.to_string()))
}

/// Each probe with the partition it came back under, or `None` if the first came back as
/// published (the server does not map telemetry).
async fn read_probes(
    answers: &mut futures::stream::SelectAll<async_nats::Subscriber>,
    probes: &[String],
) -> Result<Option<Vec<(String, u32)>>, BusError> {
    use futures::StreamExt;
    let mut found = Vec::with_capacity(probes.len());
    while found.len() < probes.len() {
        let Some(message) = answers.next().await else {
            return Err(probe_failed("the connection closed".into()));
        };
        let mut tokens = message.subject.split('.').skip(2);
        match (tokens.next(), tokens.next()) {
            (Some(probe), None) if probe == probes[0] => return Ok(None),
            (Some(p), Some(probe)) => match p.parse() {
                Ok(p) => found.push((probe.to_owned(), p)),
                Err(_) => return Err(probe_failed(format!("{} is no partition", message.subject))),
            },
            _ => {}
        }
    }
    Ok(Some(found))
}

/// What `mapek streams apply` is asked for: both as the server has them unless said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// How many monitor streams when the server maps telemetry [default: as many as the
    /// server has, else [`DEFAULT_MONITOR_STREAMS`]].
    pub monitor_streams: Option<usize>,
    /// How many partitions [default: as many as the server maps telemetry into, or the
    /// streams hold, else [`layout::DEFAULT_PARTITIONS`]].
    pub partitions: Option<u32>,
}

/// The layout [`apply`] would use on this server for `wanted`.
///
/// The partition count is the one asked for, else the larger of the server's mapping's and
/// the streams' (they differ while a count grows). It may grow, by a multiple, never shrink (ADR 0024): partition `p` of the
/// grown count stays in the stream that held `p` modulo the old one, where its nodes' history
/// is. A server that maps telemetry must map it into the count, or into a count it is a
/// multiple of (the streams grown first, the mapping changed after).
pub async fn detect_layout(js: &JetStream, wanted: Wanted) -> Result<Layout, BusError> {
    let mapped = server_mapping(js).await?;
    let stored = stored_partitions(js).await?;
    let had = mapped
        .into_iter()
        .chain(stored.iter().map(|(_, n)| *n))
        .max();
    let partitions = wanted
        .partitions
        .or(had)
        .unwrap_or(layout::DEFAULT_PARTITIONS);
    if let Some(mapped) = mapped
        && !grows_into(mapped, partitions)
    {
        return Err(BusError::Stream {
            stream: Phase::Monitor.stream().to_owned(),
            detail: format!(
                "the server maps telemetry into {mapped} partitions and {partitions} were asked \
                 for: ask for {mapped} or a multiple of it (then give the server its mapping), \
                 or give the server the mapping {} first (deploy/nats/mapping.conf)",
                mapek_domain::telemetry_mapping(partitions)
            ),
        });
    }
    if let Some((stream, held)) = stored
        .into_iter()
        .find(|(_, n)| !grows_into(*n, partitions))
    {
        return Err(BusError::Stream {
            stream,
            detail: format!(
                "holds {held} partitions and {partitions} were asked for: the count grows only \
                 by a multiple of {held}, so that each node's history stays in one partition's \
                 line (docs/adr/0024)"
            ),
        });
    }
    let Some(mapped) = mapped else {
        return Ok(Layout::Single { partitions });
    };
    let found = layout::streams_of(js, Phase::Monitor).await?;
    let shares = monitor_shares(&found, wanted.monitor_streams, partitions)?;
    Ok(Layout::Split {
        partitions,
        mapped,
        shares,
    })
}

/// Whether `from` partitions may become `to`: the same, or grown by a multiple.
fn grows_into(from: u32, to: u32) -> bool {
    to >= from && to.is_multiple_of(from)
}

/// The partitions of `partitions` each monitor stream holds: `streams` contiguous runs when
/// there are none yet (as many as asked, else [`DEFAULT_MONITOR_STREAMS`]); when there are,
/// each keeps its partitions and takes the new ones that descend from them (`p` modulo the
/// old count). Their number is fixed once made, since moving a partition to another stream
/// would leave its history behind.
fn monitor_shares(
    found: &[layout::StoredIn],
    streams: Option<usize>,
    partitions: u32,
) -> Result<Vec<Vec<u32>>, BusError> {
    let fresh = matches!(found, [only] if only.name == Phase::Monitor.stream());
    if fresh {
        let streams = streams
            .unwrap_or(DEFAULT_MONITOR_STREAMS)
            .clamp(1, partitions as usize);
        return Ok((0..streams)
            .map(|i| layout::monitor_partitions(i, streams, partitions))
            .collect());
    }
    if let Some(asked) = streams.filter(|n| *n != found.len()) {
        return Err(BusError::Stream {
            stream: layout::monitor_stream(0),
            detail: format!(
                "telemetry is stored in {} monitor streams and {asked} were asked for: their \
                 number is fixed once made, as each holds its partitions' history",
                found.len()
            ),
        });
    }
    let held = layout::partition_count(found);
    Ok(found
        .iter()
        .map(|s| (0..partitions).filter(|p| s.holds(p % held)).collect())
        .collect())
}

/// The streams of the partitioned phases the server has, each with how many partitions it
/// holds (a phase's monitor streams together, named by the first).
async fn stored_partitions(js: &JetStream) -> Result<Vec<(String, u32)>, BusError> {
    let mut found = Vec::new();
    for phase in Phase::ALL.into_iter().filter(|p| *p != Phase::Dlq) {
        let streams = layout::streams_of(js, phase).await?;
        if layout::lookup(js, &streams[0].name).await?.is_some() {
            found.push((streams[0].name.clone(), layout::partition_count(&streams)));
        }
    }
    Ok(found)
}

/// The definitions to apply for `layout`: with [`Layout::Split`], `MAPEK_MONITOR`'s is
/// replaced by the monitor streams made from it.
pub fn for_layout(defs: &[StreamDef], layout: &Layout) -> Result<Vec<StreamDef>, BusError> {
    let partitions = layout.partitions();
    let defs = defs.iter().map(|d| d.clone().with_partitions(partitions));
    let Layout::Split { shares, .. } = layout else {
        return Ok(defs.collect());
    };
    let mut out = Vec::with_capacity(defs.len() + shares.len());
    for def in defs {
        if def.name() == Phase::Monitor.stream() {
            for (index, share) in shares.iter().enumerate() {
                out.push(def.monitor_share(index, shares.len(), share)?);
            }
        } else {
            out.push(def);
        }
    }
    Ok(out)
}

/// Finds the server's layout ([`detect_layout`], as the server has it or the defaults), then
/// creates the streams that are missing and updates those whose settings differ.
pub async fn apply(js: &JetStream, defs: &[StreamDef]) -> Result<Vec<Applied>, BusError> {
    let layout = detect_layout(js, Wanted::default()).await?;
    apply_layout(js, defs, layout).await
}

/// Applies `defs` for `layout`. A server holding telemetry in the other layout's streams is
/// an error that says what to do, except an empty `MAPEK_MONITOR` left from before the server
/// mapped telemetry, which is deleted.
pub async fn apply_layout(
    js: &JetStream,
    defs: &[StreamDef],
    layout: Layout,
) -> Result<Vec<Applied>, BusError> {
    let defs = for_layout(defs, &layout)?;
    let bucket_made = record_counts(js, &layout).await?;
    let mut applied = Vec::with_capacity(defs.len() + 1);
    let single = Phase::Monitor.stream();
    match layout {
        Layout::Split { shares, .. } => {
            let count = shares.len();
            if let Ok(stream) = js.get_stream(single).await {
                let held = stream.cached_info().state.messages;
                if held > 0 {
                    return Err(BusError::Stream {
                        stream: single.to_owned(),
                        detail: format!(
                            "holds {held} events stored before the server mapped telemetry \
                             into partitions; new telemetry would go to MAPEK_MONITOR_0 to \
                             MAPEK_MONITOR_{}. Export or replay what you need from it, then \
                             delete it (nats stream rm {single}), or take the mapping out of \
                             the server's config",
                            count - 1
                        ),
                    });
                }
                js.delete_stream(single)
                    .await
                    .map_err(|e| BusError::Stream {
                        stream: single.to_owned(),
                        detail: format!("cannot delete the empty stream: {e}"),
                    })?;
                applied.push(Applied::Deleted {
                    name: single.to_owned(),
                });
            }
        }
        Layout::Single { .. } => {
            let first = layout::monitor_stream(0);
            if js.get_stream(&first).await.is_ok() {
                return Err(BusError::Stream {
                    stream: first,
                    detail: format!(
                        "exists, but the server no longer maps telemetry into partitions: \
                         telemetry would go to a new {single} and the workers would not read \
                         it. Put the mapping back in the server's config (deploy/nats/)"
                    ),
                });
            }
        }
    }
    for def in &defs {
        let name = def.name().to_owned();
        let failed = |detail: String| BusError::Stream {
            stream: name.clone(),
            detail,
        };
        match js.get_stream(&name).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(|e| failed(e.to_string()))?;
                let changed = def.differences(&info.config);
                if changed.is_empty() {
                    applied.push(Applied::Unchanged { name });
                } else {
                    placed(&name, def.config.num_replicas, || {
                        js.update_stream(&def.config)
                    })
                    .await
                    .map_err(|e| failed(format!("cannot update {}: {e}", changed.join(", "))))?;
                    applied.push(Applied::Updated { name, changed });
                }
            }
            Err(e) if is_not_found(&e) => {
                placed(&name, def.config.num_replicas, || {
                    js.create_stream(def.config.clone())
                })
                .await
                .map_err(|e| failed(format!("cannot create: {e}")))?;
                applied.push(Applied::Created { name });
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    if bucket_made {
        applied.push(Applied::Created {
            name: format!("KV_{}", crate::config_store::BUCKET),
        });
    }
    Ok(applied)
}

/// How long applying asks again while a cluster has too few servers up to place a stream's
/// replicas on: a cluster just started, or with a server restarting, counts its servers
/// within seconds.
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(30);

/// Runs `request` (the create or update of stream `name` with `replicas` copies) again, with
/// backoff and a warning, while the cluster answers that it has no servers to place the
/// stream on, for up to [`PLACEMENT_WAIT`]; then the error, with what to check.
pub(crate) async fn placed<T, F, Fut>(
    name: &str,
    replicas: usize,
    mut request: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CreateStreamError>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(250);
    loop {
        match request().await {
            Ok(done) => return Ok(done),
            Err(e) if no_peers(&e) && started.elapsed() < PLACEMENT_WAIT => {
                tracing::warn!(
                    stream = name,
                    "no {replicas} servers up to place it on (a cluster starting?); asking again"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) if no_peers(&e) => {
                return Err(format!(
                    "{e}: no {replicas} servers with JetStream were up to place its replicas \
                     on within {} s. Start the cluster's missing servers, or apply with \
                     --replicas no more than the servers it has",
                    PLACEMENT_WAIT.as_secs()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Whether the cluster answered that it has no servers to place a stream's replicas on.
fn no_peers(e: &CreateStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::CreateStreamErrorKind;
    match e.kind() {
        CreateStreamErrorKind::JetStream(js) => js.error_code() == ErrorCode::CLUSTER_NO_PEERS,
        _ => false,
    }
}

/// Records the partition counts the streams have had ([`crate::config_store`]): the one
/// they have now (if made), the server's mapping's, and `layout`'s. Before the streams change,
/// so that a worker that sees the new count finds the old one recorded. Whether it made the
/// bucket they are kept in.
async fn record_counts(js: &JetStream, layout: &Layout) -> Result<bool, BusError> {
    let made = crate::config_store::open_existing(js).await.is_none();
    let mut counts = vec![layout.partitions()];
    if let Layout::Split { mapped, .. } = layout {
        counts.push(*mapped);
    }
    if let Ok(Some(stream)) = layout::lookup(js, Phase::Plan.stream()).await {
        let transform = stream.cached_info().config.subject_transform.as_ref();
        counts.extend(transform.and_then(|t| layout::partitions_in_transform(&t.destination)));
    }
    crate::config_store::record_partition_counts(js, &counts).await?;
    Ok(made)
}

/// Whether a stream lookup failed because there is no such stream (not because nobody
/// answered).
pub fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(e.kind(), GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// How many nodes have telemetry on the monitor streams (one stored subject per node), for
/// limits that are a share of the mesh.
pub async fn count_reporting_nodes(js: &JetStream) -> Result<usize, BusError> {
    use futures::StreamExt;
    let mut nodes = 0;
    for stored in layout::streams_of(js, Phase::Monitor).await? {
        let failed = |detail: String| BusError::Stream {
            stream: stored.name.clone(),
            detail,
        };
        let mut subjects = js
            .get_stream(&stored.name)
            .await
            .map_err(|e| failed(e.to_string()))?
            .info_with_subjects("mapek.monitor.>")
            .await
            .map_err(|e| failed(e.to_string()))?;
        while let Some(subject) = subjects.next().await {
            subject.map_err(|e| failed(e.to_string()))?;
            nodes += 1;
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_tell_every_partition_count_apart() {
        let probes = probes();
        for count in 1..=layout::MAX_PARTITIONS {
            let answers: Vec<(String, u32)> = probes
                .iter()
                .map(|p| (p.clone(), layout::fnv1a(p) % count))
                .collect();
            assert_eq!(count_from_answers(&answers), Some(count));
        }
        // Partitions no count gives: a mapping of another kind.
        let odd: Vec<(String, u32)> = probes.iter().map(|p| (p.clone(), 0)).collect();
        assert_eq!(
            count_from_answers(&odd[..1]),
            None,
            "one probe fits many counts"
        );
        let mut wrong = odd;
        wrong[0].1 = 5;
        assert_eq!(count_from_answers(&wrong), None);
    }

    #[test]
    fn definitions_take_the_partition_count_asked_for() {
        let defs = builtin();
        let shares = (0..4)
            .map(|i| layout::monitor_partitions(i, 4, 32))
            .collect();
        let split = Layout::Split {
            partitions: 32,
            mapped: 32,
            shares,
        };
        let out = for_layout(&defs, &split).unwrap();
        let plan = out.iter().find(|d| d.name() == "MAPEK_PLAN").unwrap();
        let dest = &plan.config.subject_transform.as_ref().unwrap().destination;
        assert_eq!(layout::partitions_in_transform(dest), Some(32));
        let monitor: Vec<_> = out
            .iter()
            .filter(|d| layout::monitor_index(d.name()).is_some())
            .collect();
        assert_eq!(monitor.len(), 4);
        assert_eq!(monitor[3].config.subjects.len(), 8);
        assert_eq!(monitor[3].config.subjects[7], "mapek.monitor.31.*");
        let dlq = out.iter().find(|d| d.name() == "MAPEK_DLQ").unwrap();
        assert!(dlq.config.subject_transform.is_none());
    }

    fn stored(name: &str, partitions: Vec<u32>) -> layout::StoredIn {
        layout::StoredIn {
            name: name.to_owned(),
            partitions,
        }
    }

    #[test]
    fn grown_partitions_stay_in_the_stream_of_the_partition_they_descend_from() {
        let found = [
            stored("MAPEK_MONITOR_0", vec![0, 1, 2, 3]),
            stored("MAPEK_MONITOR_1", vec![4, 5, 6, 7]),
        ];
        let shares = monitor_shares(&found, None, 32).unwrap();
        assert_eq!(shares.len(), 2);
        for (share, stream) in shares.iter().zip(&found) {
            assert_eq!(share.len(), 16);
            assert!(share.iter().all(|p| stream.holds(p % 8)), "{share:?}");
        }
        assert_eq!(runs(&shares[0]), "0-3, 8-11, 16-19, 24-27");
        // So a node's partition before and after is in one stream.
        for i in 0..200 {
            let node = mapek_domain::NodeId::new(format!("n{i}")).unwrap();
            let (old, new) = (
                layout::partition_of_node(&node, 8),
                layout::partition_of_node(&node, 32),
            );
            let holder = |p: u32| shares.iter().position(|s| s.contains(&p));
            assert_eq!(holder(old), holder(new), "{node}");
        }
        // Unchanged, a layout stays as it is; a new number of streams is refused.
        assert_eq!(
            monitor_shares(&found, Some(2), 8).unwrap(),
            [vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
        );
        let error = monitor_shares(&found, Some(4), 8).unwrap_err().to_string();
        assert!(error.contains("fixed once made"), "{error}");
        // Fresh, the streams take contiguous runs.
        let none = [stored("MAPEK_MONITOR", vec![])];
        assert_eq!(monitor_shares(&none, Some(4), 16).unwrap()[1], [4, 5, 6, 7]);
    }

    #[test]
    fn the_count_grows_by_a_multiple_and_never_shrinks() {
        assert!(grows_into(8, 8));
        assert!(grows_into(8, 32));
        assert!(!grows_into(8, 12));
        assert!(!grows_into(32, 8));
    }
}
