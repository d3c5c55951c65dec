//! Which streams store a phase.
//!
//! Every phase is stored in one stream (`MAPEK_PLAN`, …), except telemetry when the server
//! maps it into partitions itself (ADR 0012): then `MAPEK_MONITOR_0` … `MAPEK_MONITOR_<S-1>`
//! each hold some of the partitions, and the server stores and serves them in parallel.
//! Without the mapping telemetry is stored in one stream, `MAPEK_MONITOR`, whose subject
//! transform partitions it (ADR 0002). `mapek streams apply` picks the layout the server
//! allows; readers find it here, from the streams the server has.
//!
//! How many partitions there are is the streams' too (ADR 0024): a stream's transform
//! (`{{partition(32,1)}}`), or the partitions the monitor streams take between them. Every
//! reader learns it from the server, never from a constant.
//!
//! A partition is always in exactly one stream, so per-node and per-partition order are the
//! stored order of that stream, whatever the layout.

use mapek_domain::{NodeId, Phase};

use crate::{BusError, JetStream};

/// How many partitions `mapek streams apply` maps each phase's subjects into when neither the
/// server nor the command line says otherwise (`{{partition(8,1)}}`).
pub const DEFAULT_PARTITIONS: u32 = 8;

/// The most partitions a phase may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// How many monitor streams `mapek streams apply` makes when the server maps telemetry: about
/// the server's cores (each stream is served by one goroutine of nats-server).
pub const DEFAULT_MONITOR_STREAMS: usize = 2;

/// The prefix of the monitor streams' names in the mapped layout.
const SPLIT_PREFIX: &str = "MAPEK_MONITOR_";

/// A stream and the partitions of its phase it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredIn {
    /// The stream's name.
    pub name: String,
    /// The partitions it holds, ascending.
    pub partitions: Vec<u32>,
}

impl StoredIn {
    /// Whether it holds `partition`.
    pub fn holds(&self, partition: u32) -> bool {
        self.partitions.contains(&partition)
    }

    fn whole(name: &str, partitions: u32) -> Self {
        Self {
            name: name.to_owned(),
            partitions: (0..partitions).collect(),
        }
    }
}

/// How many partitions `streams`, the streams of one phase, hold between them.
pub fn partition_count(streams: &[StoredIn]) -> u32 {
    streams.iter().map(|s| s.partitions.len() as u32).sum()
}

/// The name of monitor stream `index` in the mapped layout: `MAPEK_MONITOR_<index>`.
pub fn monitor_stream(index: usize) -> String {
    format!("{SPLIT_PREFIX}{index}")
}

/// The partitions monitor stream `index` of `count` holds, of `partitions`: a contiguous run.
pub fn monitor_partitions(index: usize, count: usize, partitions: u32) -> Vec<u32> {
    (0..partitions)
        .filter(|p| (*p as usize) * count / partitions as usize == index)
        .collect()
}

/// The partition count a subject transform's destination names: 32 for
/// `mapek.plan.{{partition(32,1)}}.{{wildcard(1)}}`, `None` when it names none.
pub fn partitions_in_transform(destination: &str) -> Option<u32> {
    let compact: String = destination.split_whitespace().collect();
    let (_, after) = compact.split_once("{{partition(")?;
    let (count, _) = after.split_once(',')?;
    count
        .parse()
        .ok()
        .filter(|n| (1..=MAX_PARTITIONS).contains(n))
}

/// `destination` mapping into `partitions` partitions instead of the count it names (with the
/// spaces a subject never has taken out).
pub fn with_partitions(destination: &str, partitions: u32) -> String {
    let compact: String = destination.split_whitespace().collect();
    let Some((before, after)) = compact.split_once("{{partition(") else {
        return destination.to_owned();
    };
    let Some((_, rest)) = after.split_once(',') else {
        return destination.to_owned();
    };
    format!("{before}{{{{partition({partitions},{rest}")
}

/// The index of a monitor stream of the mapped layout: 1 for `MAPEK_MONITOR_1`, `None` for
/// any other name.
pub fn monitor_index(name: &str) -> Option<usize> {
    let index = name.strip_prefix(SPLIT_PREFIX)?;
    if !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    index.parse().ok()
}

/// The phase a stream stores: `MAPEK_MONITOR` and `MAPEK_MONITOR_<n>` store telemetry.
pub fn phase_of_stream(name: &str) -> Option<Phase> {
    if monitor_index(name).is_some() {
        return Some(Phase::Monitor);
    }
    Phase::ALL.into_iter().find(|p| p.stream() == name)
}

/// The partition a stored-subject filter or subject names (`mapek.monitor.3.>`,
/// `mapek.monitor.3.n17`), or `None` if it names none (`mapek.monitor.>`,
/// `mapek.monitor.*.n17`). Every crate reads a stored subject's partition here: the workers,
/// the audit's chains and replay.
pub fn partition_of(subject: &str) -> Option<u32> {
    let mut tokens = subject.split('.');
    let (Some("mapek"), Some(_), Some(p), Some(_)) =
        (tokens.next(), tokens.next(), tokens.next(), tokens.next())
    else {
        return None;
    };
    p.parse().ok().filter(|p| *p < MAX_PARTITIONS)
}

/// The partition of `node` among `partitions`, as the server computes it for
/// `{{partition(<partitions>,1)}}`: the 32-bit FNV-1a hash of the node id, modulo the count.
pub fn partition_of_node(node: &NodeId, partitions: u32) -> u32 {
    fnv1a(node.as_str()) % partitions.max(1)
}

/// The partitions `partition` of `count` descends from: its partition under each count the
/// streams grew from (of `grown_from`, the counts they have had, those that divide `count`:
/// ADR 0024), other than itself. A node in `partition` may have been in one of these before
/// the count grew, with events of it still stored there. Not knowing the counts (`None`), every
/// divisor of `count` is taken for one: `partition` 18 of 32 then descends from 2 (of 8 or
/// 16) and 0 (of 1 or 2).
pub fn ancestors(partition: u32, count: u32, grown_from: Option<&[u32]>) -> Vec<u32> {
    let was = |m: &u32| grown_from.is_none_or(|counts| counts.contains(m));
    let mut found: Vec<u32> = (1..count)
        .filter(|&m| count.is_multiple_of(m) && was(&m))
        .map(|m| partition % m)
        .filter(|&r| r != partition)
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// The partitions `partition` of `count` of a phase descends from ([`ancestors`]), under the
/// counts recorded for the streams ([`crate::config_store::partition_counts`]).
pub async fn recorded_ancestors(js: &JetStream, partition: u32, count: u32) -> Vec<u32> {
    let counts = crate::config_store::partition_counts(js).await;
    ancestors(partition, count, counts.as_deref())
}

/// The 32-bit FNV-1a hash of `token`, nats-server's hash for `{{partition(…)}}`.
pub fn fnv1a(token: &str) -> u32 {
    token.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The streams that store `phase`, in name order, each with the partitions it holds. One for
/// every phase but telemetry, which has one per monitor stream of the mapped layout. A server
/// without the phase's stream answers its name with [`DEFAULT_PARTITIONS`], so that the
/// caller reports it missing as for any other phase.
///
/// Only a server's "no such stream" ends the search: a lookup nobody answered (a stream
/// electing its leader after a server was lost, a timeout) is an error to retry, never taken
/// for a missing stream, or a reader would take a partial layout for the whole one.
pub async fn streams_of(js: &JetStream, phase: Phase) -> Result<Vec<StoredIn>, BusError> {
    if phase == Phase::Dlq {
        return Ok(vec![StoredIn::whole(phase.stream(), 1)]);
    }
    if let Some(stream) = lookup(js, phase.stream()).await? {
        let config = &stream.cached_info().config;
        let partitions = config
            .subject_transform
            .as_ref()
            .and_then(|t| partitions_in_transform(&t.destination))
            .unwrap_or(DEFAULT_PARTITIONS);
        return Ok(vec![StoredIn::whole(phase.stream(), partitions)]);
    }
    if phase != Phase::Monitor {
        return Ok(vec![StoredIn::whole(phase.stream(), DEFAULT_PARTITIONS)]);
    }
    let mut found = Vec::new();
    loop {
        let name = monitor_stream(found.len());
        // The lookup brings the stream's config with it: no second request.
        let Some(stream) = lookup(js, &name).await? else {
            break;
        };
        let mut partitions: Vec<u32> = stream
            .cached_info()
            .config
            .subjects
            .iter()
            .filter_map(|s| partition_of(s))
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        found.push(StoredIn { name, partitions });
    }
    if found.is_empty() {
        found.push(StoredIn::whole(phase.stream(), DEFAULT_PARTITIONS));
    }
    Ok(found)
}

/// How many partitions `phase`'s streams hold: what its partitioned readers share out.
pub async fn partitions_of(js: &JetStream, phase: Phase) -> Result<u32, BusError> {
    Ok(partition_count(&streams_of(js, phase).await?))
}

/// The stream `name`, or `None` when the server says it has no such stream.
pub(crate) async fn lookup(
    js: &JetStream,
    name: &str,
) -> Result<Option<async_nats::jetstream::stream::Stream>, BusError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if crate::streams::is_not_found(&e) => Ok(None),
        Err(e) => Err(BusError::Stream {
            stream: name.to_owned(),
            detail: format!("cannot look it up (electing a leader?): {e}"),
        }),
    }
}

/// The stream that holds `partition` of `phase`, or the phase's only stream when `partition`
/// is `None`. Reading all of the telemetry through one consumer is refused when it is split
/// over several streams: read it by partition (or through [`crate::Subscriber`], which merges
/// them).
pub async fn stream_for(
    js: &JetStream,
    phase: Phase,
    partition: Option<u32>,
) -> Result<String, BusError> {
    choose(&streams_of(js, phase).await?, phase, partition)
}

/// [`stream_for`] among `streams`, the layout found. A partition is looked up even when one
/// stream was found: it must hold it.
fn choose(streams: &[StoredIn], phase: Phase, partition: Option<u32>) -> Result<String, BusError> {
    let names = || {
        streams
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (streams, partition) {
        ([only], None) => Ok(only.name.clone()),
        (_, Some(p)) => streams
            .iter()
            .find(|s| s.holds(p))
            .map(|s| s.name.clone())
            .ok_or_else(|| BusError::Stream {
                stream: names(),
                detail: format!(
                    "no stream holds partition {p} of {phase}; run `mapek streams apply`"
                ),
            }),
        (_, None) => Err(BusError::Stream {
            stream: names(),
            detail: format!(
                "{phase} is split over {} streams: read it one partition at a time",
                streams.len()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_descends_from_its_partition_under_each_smaller_count() {
        assert_eq!(ancestors(18, 32, None), vec![0, 2]);
        assert_eq!(ancestors(2, 32, None), vec![0]);
        assert_eq!(ancestors(0, 32, None), Vec::<u32>::new());
        assert_eq!(ancestors(11, 12, None), vec![0, 1, 2, 3, 5]);
        assert_eq!(ancestors(0, 1, None), Vec::<u32>::new());
        // Only the counts the streams had: grown 8 to 32, 18 descends from 2 alone; never
        // grown, nothing.
        assert_eq!(ancestors(18, 32, Some(&[8, 32])), vec![2]);
        assert_eq!(ancestors(2, 32, Some(&[8, 32])), Vec::<u32>::new());
        assert_eq!(ancestors(5, 8, Some(&[8])), Vec::<u32>::new());
        assert_eq!(ancestors(45, 64, Some(&[8, 16, 64])), vec![5, 13]);
        // A node moves from its partition of 8 to the one of 32 it descends to.
        for n in 0..200 {
            let node = NodeId::new(format!("n{n}")).unwrap();
            let (before, after) = (partition_of_node(&node, 8), partition_of_node(&node, 32));
            let from = ancestors(after, 32, Some(&[8, 32]));
            assert!(
                before == after || from == [before],
                "{node}: {before} -> {after}"
            );
        }
    }

    #[test]
    fn two_monitor_streams_hold_four_partitions_each() {
        assert_eq!(monitor_partitions(0, 2, 8), vec![0, 1, 2, 3]);
        assert_eq!(monitor_partitions(1, 2, 8), vec![4, 5, 6, 7]);
        let three: Vec<_> = (0..3).map(|i| monitor_partitions(i, 3, 8)).collect();
        assert_eq!(three.concat(), (0..8).collect::<Vec<_>>());
        assert_eq!(monitor_partitions(0, 1, 8).len(), 8);
    }

    #[test]
    fn sixteen_monitor_streams_share_32_partitions_two_each() {
        let all: Vec<_> = (0..16).map(|i| monitor_partitions(i, 16, 32)).collect();
        assert!(all.iter().all(|p| p.len() == 2), "{all:?}");
        assert_eq!(all.concat(), (0..32).collect::<Vec<_>>());
    }

    #[test]
    fn a_transform_names_its_partition_count() {
        let dest = "mapek.plan.{{partition(8,1)}}.{{wildcard(1)}}";
        assert_eq!(partitions_in_transform(dest), Some(8));
        assert_eq!(
            partitions_in_transform("mapek.plan.{{ partition(32, 1) }}.{{wildcard(1)}}"),
            Some(32)
        );
        assert_eq!(partitions_in_transform("mapek.plan.{{wildcard(1)}}"), None);
        assert_eq!(partitions_in_transform("x.{{partition(0,1)}}"), None);
        let rewritten = with_partitions(dest, 32);
        assert_eq!(rewritten, "mapek.plan.{{partition(32,1)}}.{{wildcard(1)}}");
        assert_eq!(partitions_in_transform(&rewritten), Some(32));
        assert_eq!(with_partitions("mapek.dlq.>", 32), "mapek.dlq.>");
        assert_eq!(
            with_partitions("mapek.plan.{{ partition(8, 1) }}.{{wildcard(1)}}", 16),
            "mapek.plan.{{partition(16,1)}}.{{wildcard(1)}}"
        );
    }

    #[test]
    fn monitor_streams_of_both_layouts_store_telemetry() {
        assert_eq!(phase_of_stream("MAPEK_MONITOR"), Some(Phase::Monitor));
        assert_eq!(phase_of_stream("MAPEK_MONITOR_1"), Some(Phase::Monitor));
        assert_eq!(phase_of_stream("MAPEK_PLAN"), Some(Phase::Plan));
        assert_eq!(phase_of_stream("MAPEK_MONITOR_x"), None);
        assert_eq!(phase_of_stream("MAPEK_MONITOR_+1"), None);
        assert_eq!(phase_of_stream("MAPEK_MONITOR_"), None);
        assert_eq!(monitor_index("MAPEK_MONITOR_10"), Some(10));
        assert_eq!(phase_of_stream("OTHER"), None);
    }

    #[test]
    fn a_partition_is_read_only_from_the_stream_that_holds_it() {
        let first = StoredIn {
            name: monitor_stream(0),
            partitions: monitor_partitions(0, 2, 8),
        };
        let second = StoredIn {
            name: monitor_stream(1),
            partitions: monitor_partitions(1, 2, 8),
        };
        let both = [first.clone(), second];
        assert_eq!(
            choose(&both, Phase::Monitor, Some(7)).unwrap(),
            "MAPEK_MONITOR_1"
        );
        assert!(choose(&both, Phase::Monitor, None).is_err());
        // A layout found only in part never sends a partition to a stream without it.
        let error = choose(&[first], Phase::Monitor, Some(7)).unwrap_err();
        assert!(
            error.to_string().contains("no stream holds partition 7"),
            "{error}"
        );
        assert_eq!(partition_count(&both), 8);
        let whole = [StoredIn::whole("MAPEK_MONITOR", 8)];
        assert_eq!(
            choose(&whole, Phase::Monitor, Some(7)).unwrap(),
            "MAPEK_MONITOR"
        );
        assert_eq!(
            choose(&whole, Phase::Monitor, None).unwrap(),
            "MAPEK_MONITOR"
        );
    }

    #[test]
    fn filters_name_a_partition_or_none() {
        assert_eq!(partition_of("mapek.monitor.3.>"), Some(3));
        assert_eq!(partition_of("mapek.monitor.7.n17"), Some(7));
        assert_eq!(partition_of("mapek.monitor.0.*"), Some(0));
        assert_eq!(partition_of("mapek.monitor.*.n17"), None);
        assert_eq!(partition_of("mapek.monitor.>"), None);
        assert_eq!(partition_of("mapek.monitor.31.n1"), Some(31));
        assert_eq!(partition_of("mapek.monitor.1024.n1"), None);
    }

    #[test]
    fn node_partitions_follow_fnv_1a() {
        // FNV-1a 32 of "a" is 0xe40c292c; of "" it is the offset basis.
        let a = NodeId::new("a").unwrap();
        assert_eq!(partition_of_node(&a, 8), 0xe40c_292c % 8);
        assert_eq!(partition_of_node(&a, 32), 0xe40c_292c % 32);
        let spread: std::collections::BTreeSet<u32> = (0..256)
            .map(|i| partition_of_node(&NodeId::new(format!("n{i}")).unwrap(), 32))
            .collect();
        assert_eq!(spread.len(), 32);
    }
}
