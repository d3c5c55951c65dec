//! The witness: follows MAPEK_PLAN and signs where each partition's chain ends ([`Head`]).
//!
//! It judges nothing: it reads every decision as stored, valid or not, and vouches only that
//! the last one it read in a partition had that chain hash, stored at that time. Whether the
//! decisions are genuine is the audit's to check. It signs a partition's head again soon after
//! each new decision there ([`WitnessConfig::every`]), and every head now and then though
//! nothing changed ([`WitnessConfig::heartbeat`]), so a head's `at_ms` shows that a witness
//! was still watching. When stopped, it reads what was stored up to then and signs every head
//! once more.
//!
//! One witness at a time: `mapek run` runs it under a lease with the plan phase when it has
//! the signing key.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::Store;
use mapek_bus::layout::partition_of;
use mapek_bus::{BusError, JetStream, Received, StartAt, Subscriber};
use mapek_domain::{Decision, Phase};

use crate::SigningKey;
use crate::audit::stream_info;
use crate::heads::{self, Head};

/// How often the witness signs.
#[derive(Clone, Debug)]
pub struct WitnessConfig {
    /// A partition's head is signed again at most this long after a new decision there.
    pub every: Duration,
    /// Every head is signed again this often though nothing changed.
    pub heartbeat: Duration,
}

impl Default for WitnessConfig {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            heartbeat: Duration::from_secs(60),
        }
    }
}

/// What a witness did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessStats {
    /// Decisions read.
    pub decisions: u64,
    /// Heads signed and stored.
    pub heads_signed: u64,
}

/// What the witness knows of one partition's chain.
struct Seen {
    head: String,
    head_ms: i64,
    since_ms: Option<i64>,
    changed: bool,
}

/// Follows MAPEK_PLAN from its start and keeps the heads in `MAPEK_CHAIN` signed with `key`
/// until `shutdown` completes.
pub async fn run(
    js: JetStream,
    key: Arc<SigningKey>,
    config: WitnessConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<WitnessStats, BusError> {
    let store = heads::open(&js).await?;
    let carried = carried_over(&js).await?;
    let mut seen: BTreeMap<u32, Seen> = BTreeMap::new();
    let filter = Phase::Plan.stored_filter(None);
    let mut decisions = Subscriber::<Decision>::open_subject(&js, filter, StartAt::All).await?;
    let mut read_through = 0;
    let mut stats = WitnessStats::default();
    let mut tick = tokio::time::interval(config.every);
    let mut heartbeat_at = Instant::now() + config.heartbeat;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            received = decisions.next() => {
                let received = received.ok_or_else(closed)??;
                read_through = received.stream_seq;
                note(&mut seen, &carried, received);
                stats.decisions += 1;
            }
            _ = tick.tick() => {
                let all = Instant::now() >= heartbeat_at;
                if all {
                    heartbeat_at = Instant::now() + config.heartbeat;
                }
                stats.heads_signed += sign_and_store(&store, &key, &mut seen, all).await?;
            }
            () = &mut shutdown => break,
        }
    }
    // What was stored before the stop is witnessed too.
    let last = stream_info(&js, Phase::Plan).await?.state.last_sequence;
    while read_through < last {
        match tokio::time::timeout(Duration::from_secs(2), decisions.next()).await {
            Ok(Some(Ok(received))) => {
                read_through = received.stream_seq;
                note(&mut seen, &carried, received);
                stats.decisions += 1;
            }
            _ => break,
        }
    }
    stats.heads_signed += sign_and_store(&store, &key, &mut seen, true).await?;
    Ok(stats)
}

fn closed() -> BusError {
    BusError::Consumer {
        stream: Phase::Plan.stream().to_owned(),
        detail: "the connection closed while the witness read decisions".into(),
    }
}

/// When each partition's chain began, as the heads stored before say: a witness started after
/// the chain's first decision aged out still knows it.
async fn carried_over(js: &JetStream) -> Result<BTreeMap<u32, i64>, BusError> {
    Ok(heads::read_all(js)
        .await?
        .into_iter()
        .filter_map(|(p, head)| Some((p, head.ok()?.since_ms?)))
        .collect())
}

/// Makes `received` the head of its partition.
fn note(
    seen: &mut BTreeMap<u32, Seen>,
    carried: &BTreeMap<u32, i64>,
    received: Received<Decision>,
) {
    // A decision that does not decode has no chain hash; the audit reports it.
    let Ok(decision) = &received.event else {
        return;
    };
    let partition = partition_of(&received.subject).unwrap_or(0);
    let stored_ms = stored_ms(&received);
    let seen = seen.entry(partition).or_insert_with(|| Seen {
        head: String::new(),
        head_ms: 0,
        since_ms: carried.get(&partition).copied(),
        changed: true,
    });
    if decision.prev_hash.is_empty() {
        seen.since_ms = Some(stored_ms);
    }
    seen.head = decision.chain_hash();
    seen.head_ms = stored_ms;
    seen.changed = true;
}

/// When the server stored `received`, in ms since the Unix epoch.
pub(crate) fn stored_ms<E>(received: &Received<E>) -> i64 {
    i64::try_from(received.stored.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Signs and stores the heads that changed, or all of them; returns how many.
async fn sign_and_store(
    store: &Store,
    key: &SigningKey,
    seen: &mut BTreeMap<u32, Seen>,
    all: bool,
) -> Result<u64, BusError> {
    let at_ms = now_ms();
    let mut signed = 0;
    for (partition, seen) in seen.iter_mut().filter(|(_, s)| all || s.changed) {
        let mut head = Head {
            partition: *partition,
            head: seen.head.clone(),
            head_ms: seen.head_ms,
            since_ms: seen.since_ms,
            at_ms,
            signature: Vec::new(),
        };
        // Only a broken liboqs fails here (the key's size was checked when it was loaded);
        // the old head then stays, and the audit says how old it is.
        if let Err(e) = head.sign(key) {
            tracing::error!(partition, error = %e, "cannot sign a chain head");
            continue;
        }
        store
            .put(heads::key_of(*partition), head.encode().into())
            .await
            .map_err(|e| BusError::Stream {
                stream: format!("KV_{}", mapek_bus::buckets::CHAIN),
                detail: format!("cannot store the head of partition {partition}: {e}"),
            })?;
        seen.changed = false;
        signed += 1;
    }
    Ok(signed)
}
