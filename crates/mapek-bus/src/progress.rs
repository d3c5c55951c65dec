//! How far along the loop is: each phase's streams, the consumers reading them (the workers'
//! and projectors' durable ones, and subscribers' ephemeral ones), how much each has yet to
//! take or acknowledge, and which worker holds its partition.
//!
//! This is what an operator asks first when decisions seem late: is a phase behind, which
//! partition, and who is supposed to be reading it. [`loop_progress`] reads it from the server
//! (stream and consumer infos, and the lease bucket the workers share); `mapek status` prints
//! it, and the demo waits on it before it stops its workers.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use futures::StreamExt;
use mapek_domain::Phase;
use serde::Serialize;

use crate::{BusError, JetStream, direct, layout};

/// The key-value bucket where workers record which partition they own (see
/// `mapek_loop::lease`): `analyze.p3` → the owner's name.
pub const LEASE_BUCKET: &str = "MAPEK_LEASES";

/// One stream of the loop and its readers.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StreamProgress {
    /// The stream (`MAPEK_MONITOR_1`).
    pub stream: String,
    /// The phase whose events it stores (`monitor`, …, `dlq` in JSON).
    #[serde(serialize_with = "phase_token")]
    pub phase: Phase,
    /// The partitions of its phase it holds (none for the dead letters), ascending.
    pub partitions: Vec<u32>,
    /// Messages it holds.
    pub messages: u64,
    /// Its last sequence.
    pub last_seq: u64,
    /// How many servers keep a copy of it (1 unless applied with `--replicas`).
    pub replicas: usize,
    /// The server leading it now, on a cluster: `None` on a single server, and also on a
    /// cluster while it elects one (then it takes no writes).
    pub leader: Option<String>,
    /// Its consumers: the durable ones by name, then the ephemeral ones.
    pub consumers: Vec<ConsumerProgress>,
}

/// One consumer: a worker's inbox or a projector's (durable), or an ephemeral one, gone when
/// its reader is (a projection's rebuild, another tool's). mapek's subscribers and replays
/// make none: they read by direct gets.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConsumerProgress {
    /// Its name (`analyze-p3`; the server's for an ephemeral one).
    pub name: String,
    /// Whether it is durable: a worker's or projector's, which the loop waits on, rather than
    /// a subscriber's.
    pub durable: bool,
    /// The subjects it reads (`mapek.monitor.3.>`), empty for the whole stream.
    pub filter: String,
    /// Messages it has not acknowledged yet: not delivered, or delivered and not acknowledged
    /// (for a subscriber, which acknowledges nothing: not delivered).
    pub behind: u64,
    /// Of those, delivered and waiting for their acknowledgement.
    pub unacked: u64,
    /// Messages delivered more than once (a worker died or gave one back).
    pub redelivered: u64,
    /// The stream sequence through which everything is acknowledged.
    pub ack_floor: u64,
    /// Whether a reader is waiting on it now (an open pull request).
    pub reading: bool,
    /// The worker holding the lease this consumer is read under (its partition's, or its
    /// singleton worker's), if one holds it.
    pub owner: Option<String>,
}

fn phase_token<S: serde::Serializer>(phase: &Phase, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(phase.token())
}

/// The loop's streams, in phase order (monitor, analyze, plan, execute, knowledge, dead
/// letters), with their consumers and who holds them. A stream not created yet is left out.
pub async fn loop_progress(js: &JetStream) -> Result<Vec<StreamProgress>, BusError> {
    progress(js, &Phase::ALL, &lease_owners(js).await).await
}

/// Messages the durable consumers of `phases`' streams have yet to acknowledge, all
/// together: what a caller waiting for the loop to drain polls (no lease is read).
pub async fn behind(js: &JetStream, phases: &[Phase]) -> Result<u64, BusError> {
    Ok(total_behind(&progress(js, phases, &BTreeMap::new()).await?))
}

/// Whether the durable consumer `consumer` on `stream`, reading `filter`, has acknowledged
/// every message of its filter stored before sequence `seq`: the first message after its ack
/// floor (after nothing, if the consumer is not made yet) is at `seq` or later, or there is
/// none.
pub async fn read_before(
    stream: &Stream,
    consumer: &str,
    filter: &str,
    seq: u64,
) -> Result<bool, BusError> {
    let failed = |e: &dyn std::fmt::Display| BusError::Consumer {
        stream: stream.cached_info().config.name.clone(),
        detail: format!("reading {consumer}: {e}"),
    };
    let unread_from = match stream.consumer_info(consumer).await {
        Ok(info) => info.ack_floor.stream_sequence + 1,
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => 1,
        Err(e) => return Err(failed(&e)),
    };
    if unread_from >= seq {
        return Ok(true);
    }
    match stream
        .direct_get_next_for_subject(filter, Some(unread_from))
        .await
    {
        Ok(next) => Ok(next.sequence >= seq),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(true),
        Err(e) => Err(failed(&e)),
    }
}

/// The longest a partition's reader waits for the partitions its own descends from
/// ([`until_read_before`]) before it reads on anyway: one whose reader is down must not stop
/// it for good.
pub const ORDER_WAIT: Duration = Duration::from_secs(30);

/// Waits until the reader of each partition in `after` (`layout::ancestors`) of `phase` on
/// `stream` (the durable consumer `<reader>-p<r>`, reading `mapek.<phase>.<r>.>`) has read
/// everything its partition stored before `seq`, or [`ORDER_WAIT`] has passed, which a
/// warning says; whether they all had. After the partition count grew, a node moved into a
/// partition is then read there only after the events of it left in its old one (ADR 0024).
pub async fn until_read_before(
    js: &JetStream,
    stream: &str,
    (reader, phase): (&str, Phase),
    after: &[u32],
    seq: u64,
) -> bool {
    let deadline = tokio::time::Instant::now() + ORDER_WAIT;
    // Looked up once: each try asks only the consumer and the partition's next message.
    let mut handle = None;
    for r in after {
        let consumer = format!("{reader}-p{r}");
        let filter = format!("mapek.{}.{r}.>", phase.token());
        loop {
            if handle.is_none() {
                handle = js.get_stream(stream).await.ok();
            }
            let read = match &handle {
                Some(handle) => read_before(handle, &consumer, &filter, seq).await,
                None => Ok(false),
            };
            match read {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::debug!(consumer, "cannot tell how far it read: {e}"),
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    stream,
                    consumer,
                    "has not read what was stored before {seq} within {ORDER_WAIT:?}; reading \
                     on without it (a node moved by a grown partition count may be decided out \
                     of order)"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    true
}

/// The streams of `phases` and their consumers, each durable one with its holder in `owners`.
async fn progress(
    js: &JetStream,
    phases: &[Phase],
    owners: &BTreeMap<String, String>,
) -> Result<Vec<StreamProgress>, BusError> {
    let mut out = Vec::new();
    for &phase in phases {
        for (piece, stored) in layout::streams_of(js, phase).await?.into_iter().enumerate() {
            let Ok(stream) = js.get_stream(&stored.name).await else {
                continue;
            };
            // Fetched with the stream just now: no second request.
            let info = stream.cached_info();
            let state = info.state.clone();
            let replicas = info.config.num_replicas.max(1);
            let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
            let mut consumers = Vec::new();
            let mut infos = stream.consumers();
            while let Some(info) = infos.next().await {
                let info = info.map_err(|e| BusError::Consumer {
                    stream: stored.name.clone(),
                    detail: format!("listing consumers: {e}"),
                })?;
                let durable = info.config.durable_name.is_some();
                consumers.push(ConsumerProgress {
                    durable,
                    owner: durable
                        .then(|| owner_of(owners, &info.name, piece))
                        .flatten(),
                    filter: info.config.filter_subject.clone(),
                    behind: info.num_pending + info.num_ack_pending as u64,
                    unacked: info.num_ack_pending as u64,
                    redelivered: info.num_redelivered as u64,
                    ack_floor: info.ack_floor.stream_sequence,
                    reading: info.num_waiting > 0,
                    name: info.name,
                });
            }
            consumers.sort_by_key(|c| (!c.durable, natural_key(&c.name)));
            out.push(StreamProgress {
                stream: stored.name,
                partitions: match phase {
                    Phase::Dlq => Vec::new(),
                    _ => stored.partitions,
                },
                phase,
                messages: state.messages,
                last_seq: state.last_sequence,
                replicas,
                leader,
                consumers,
            });
        }
    }
    Ok(out)
}

/// Messages the durable consumers of `streams` have yet to acknowledge, all together (what
/// subscribers have yet to take is theirs, not the loop's).
pub fn total_behind(streams: &[StreamProgress]) -> u64 {
    streams
        .iter()
        .flat_map(|s| &s.consumers)
        .filter(|c| c.durable)
        .map(|c| c.behind)
        .sum()
}

/// The lease a partitioned consumer's reader holds: `analyze-p3` → `analyze.p3`.
fn lease_key(consumer: &str) -> String {
    match consumer.rsplit_once("-p") {
        Some((phase, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{phase}.p{p}")
        }
        _ => consumer.to_owned(),
    }
}

/// Who reads `consumer`, on the `piece`th stream of its phase. A consumer whose streams are
/// shared out by lease (the telemetry projection's `knowledge-sql-monitor`, leased per
/// stream as `knowledge-sql-monitor.p1`, its workers alive as `knowledge-sql-monitor.worker.
/// <name>`) is read by its stream's lease holder, or nobody. Any other is read by the holder
/// of its partition's lease, else of the longest lease named by a prefix of it (a
/// singleton's consumers: `evaluate-results` under `evaluate`).
fn owner_of(owners: &BTreeMap<String, String>, consumer: &str, piece: usize) -> Option<String> {
    let shared = format!("{consumer}.");
    if owners.keys().any(|k| k.starts_with(&shared)) {
        return owners.get(&format!("{shared}p{piece}")).cloned();
    }
    let mut name = lease_key(consumer);
    loop {
        if let Some(owner) = owners.get(&name) {
            return Some(owner.clone());
        }
        name.truncate(name.rfind('-')?);
    }
}

/// Sorts `plan-p10` after `plan-p9`.
fn natural_key(name: &str) -> (String, u64) {
    match name.rsplit_once("-p") {
        Some((head, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
            (head.to_owned(), p.parse().unwrap_or(u64::MAX))
        }
        _ => (name.to_owned(), 0),
    }
}

/// Every lease held in the bucket, and who holds it; none when there is no bucket yet or it
/// cannot be read. It reads by one direct get, so a read-only identity can read it.
pub async fn lease_owners(js: &JetStream) -> BTreeMap<String, String> {
    let prefix = format!("$KV.{LEASE_BUCKET}.");
    let stream = format!("KV_{LEASE_BUCKET}");
    let Ok(entries) = direct::last_per_subject(js, &stream, &format!("{prefix}>")).await else {
        return BTreeMap::new();
    };
    entries
        .into_iter()
        .filter(|e| !e.payload.is_empty() && !direct::is_deleted(e))
        .filter_map(|e| {
            let key = e.subject.strip_prefix(&prefix)?.to_owned();
            Some((key, String::from_utf8_lossy(&e.payload).into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_consumer_is_read_under_its_partition_lease() {
        assert_eq!(lease_key("analyze-p3"), "analyze.p3");
        assert_eq!(lease_key("execute-p12"), "execute.p12");
        // Not partitioned: the singleton's lease is named after it.
        assert_eq!(lease_key("evaluate-results"), "evaluate-results");
        assert_eq!(lease_key("mapek-p"), "mapek-p");
    }

    #[test]
    fn a_singletons_consumers_are_read_by_its_lease_holder() {
        let owners: BTreeMap<String, String> = [
            ("analyze.p3", "w1"),
            ("evaluate", "w2"),
            ("knowledge-sql", "w3"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        assert_eq!(owner_of(&owners, "analyze-p3", 0).as_deref(), Some("w1"));
        assert_eq!(owner_of(&owners, "analyze-p4", 0), None);
        assert_eq!(
            owner_of(&owners, "evaluate-results", 0).as_deref(),
            Some("w2")
        );
        assert_eq!(
            owner_of(&owners, "knowledge-sql-analyze", 0).as_deref(),
            Some("w3")
        );
        assert_eq!(owner_of(&owners, "execute", 0), None);
    }

    #[test]
    fn a_telemetry_streams_projection_is_read_by_its_streams_lease_holder() {
        let owners: BTreeMap<String, String> = [
            ("knowledge-sql", "w1"),
            ("knowledge-sql-monitor.p0", "w2"),
            ("knowledge-sql-monitor.p1", "w3"),
            ("knowledge-sql-monitor.worker.w2", "w2"),
            ("knowledge-sql-monitor.worker.w3", "w3"),
            ("analyze.p5", "w4"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        let owner = |consumer, piece| owner_of(&owners, consumer, piece);
        assert_eq!(owner("knowledge-sql-monitor", 0).as_deref(), Some("w2"));
        assert_eq!(owner("knowledge-sql-monitor", 1).as_deref(), Some("w3"));
        // A stream nobody leases is read by nobody, not by the incidents' projector.
        assert_eq!(owner("knowledge-sql-monitor", 2), None);
        assert_eq!(owner("analyze-p5", 1).as_deref(), Some("w4"));
        assert_eq!(owner("knowledge-sql-plan", 0).as_deref(), Some("w1"));
    }

    #[test]
    fn partitions_sort_by_number() {
        let mut names = ["plan-p10", "plan-p9", "analyze-p1", "evaluate"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["analyze-p1", "evaluate", "plan-p9", "plan-p10"]);
    }
}
