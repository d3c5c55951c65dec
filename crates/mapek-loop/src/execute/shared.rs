//! Executors that share the work (ADR 0007): every copy is active, they share the plan
//! partitions, and they judge one decision at a time under one lock, leasing each node while
//! its command is out. The lock and the leases are kept behind [`SharedLeases`], which
//! mapek-knowledge implements for Redis.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mapek_bus::{BusError, JetStream};
use mapek_domain::execute::CommandOut;
use mapek_domain::{ActionKind, ActionResult, Decision, ExecuteConfig, Interlocks, NodeId, Phase};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::follower::Follower;
use super::{DURABLE, ExecuteStats, ExecutorKeys, execute};
use crate::lease::{Sharing, share_partitions};

/// The lock executors judge under, and how long it outlives a holder that died.
const JUDGE_LOCK: &str = "execute.judge";
const JUDGE_LOCK_TTL: Duration = Duration::from_secs(5);

/// What a store of [`SharedLeases`] failed with: said in a warning, and the decision waits.
pub type ShareError = Box<dyn std::error::Error + Send + Sync>;

/// Where executors that share the work keep what they share: a lock they take turns judging
/// under, and a lease on each node while a command is out to it. Each is held by a holder
/// (any text that says who and why) until given back or until its time to live runs out (a
/// holder that died). mapek-knowledge implements it for its Redis.
pub trait SharedLeases: Send + Sync + Debug {
    /// Takes the lock `name` for `holder` for `ttl` if nobody holds it; `true` if taken.
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, ShareError>>;

    /// Gives the lock `name` back if `holder` holds it; `true` if it did.
    fn unlock<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, ShareError>>;

    /// Takes the lease on `node` for `holder` for `ttl` if nobody holds it; `true` if taken.
    fn try_lease<'a>(
        &'a self,
        node: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, ShareError>>;

    /// Gives the lease on `node` back if `holder` holds it; `true` if it did.
    fn release<'a>(
        &'a self,
        node: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, ShareError>>;

    /// Every node lease held now, (node, holder), ordered by node; locks are not listed.
    fn leases(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, ShareError>>;
}

/// What several executors share: where their leases are, this executor's name in them, and
/// how the plan partitions are shared.
#[derive(Clone, Debug)]
pub struct Shared {
    leases: Arc<dyn SharedLeases>,
    name: String,
    partitions: u32,
    ttl: Duration,
}

impl Shared {
    /// Shares through `leases` (a Redis), as the executor `name` (unique among the
    /// executors: the worker's name, host and process), the plan stream's partitions
    /// ([`mapek_bus::layout::DEFAULT_PARTITIONS`] unless told), with partition leases that outlive a dead executor by [`crate::lease::DEFAULT_TTL`].
    pub fn new(leases: impl SharedLeases + 'static, name: impl Into<String>) -> Self {
        Self {
            leases: Arc::new(leases),
            name: name.into(),
            partitions: mapek_bus::layout::DEFAULT_PARTITIONS,
            ttl: crate::lease::DEFAULT_TTL,
        }
    }

    /// The plan stream has `partitions` partitions.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Partition leases outlive a dead executor by `ttl`.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// Runs this executor beside others that share `shared`'s leases, until `shutdown`: the plan
/// partitions are shared among the live executors, and the interlocks see every executor's
/// commands and results. Checks decisions and signs results with `keys` as
/// [`super::run_audited`] does.
pub async fn run_shared(
    js: JetStream,
    client: async_nats::Client,
    config: ExecuteConfig,
    keys: impl Into<ExecutorKeys>,
    shared: Shared,
    shutdown: impl Future<Output = ()>,
) -> Result<ExecuteStats, BusError> {
    let keys = keys.into();
    config.check()?;
    retire_the_other_way(&js, true).await?;
    let mut total = ExecuteStats::default();
    let work = |p: u32, stopped: oneshot::Receiver<()>| {
        let part = Part {
            partition: p,
            shared: shared.clone(),
        };
        let shutdown = mapek_bus::until_stopped(stopped);
        execute(
            js.clone(),
            client.clone(),
            config.clone(),
            keys.clone(),
            Some(part),
            shutdown,
        )
    };
    let sharing = Sharing {
        phase: "execute",
        partitions: shared.partitions,
        owner: shared.name.clone(),
        ttl: shared.ttl,
    };
    let done = |r: Result<Result<ExecuteStats, BusError>, tokio::task::JoinError>| match r {
        Ok(Ok(s)) => total.add(&s),
        Ok(Err(e)) => tracing::error!(error = %e, "an execute partition stopped"),
        Err(e) if e.is_cancelled() => tracing::warn!("an execute partition stopped: lease lost"),
        Err(e) => tracing::error!(error = %e, "an execute partition panicked"),
    };
    share_partitions(&js, sharing, work, done, shutdown).await?;
    Ok(total)
}

/// One plan partition of an executor that shares the work.
pub(super) struct Part {
    pub(super) partition: u32,
    shared: Shared,
}

impl Part {
    /// How many plan partitions there are.
    pub(super) fn partitions(&self) -> u32 {
        self.shared.partitions
    }
}

/// Whether `lease` is a partition's lease of executors that share the work (`execute.p3`).
fn is_partition_lease(lease: &str) -> bool {
    numbered(lease, ".p")
}

/// Whether `consumer` is a partition's reader of executors that share the work
/// (`execute-p3`).
fn is_partition_reader(consumer: &str) -> bool {
    numbered(consumer, "-p")
}

/// Whether `name` is [`DURABLE`], then `separator`, then a number.
fn numbered(name: &str, separator: &str) -> bool {
    name.strip_prefix(DURABLE)
        .and_then(|rest| rest.strip_prefix(separator))
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Refuses to start an executor (`sharing` or alone) while one running the other way holds
/// its lease; then deletes the plan stream's durable readers the other way left.
pub(super) async fn retire_the_other_way(js: &JetStream, sharing: bool) -> Result<(), BusError> {
    let failed = |detail: String| BusError::Consumer {
        stream: Phase::Plan.stream().to_owned(),
        detail,
    };
    let owners = mapek_bus::progress::lease_owners(js).await;
    let running = owners.iter().find(|(lease, _)| {
        if sharing {
            lease.as_str() == DURABLE
        } else {
            is_partition_lease(lease)
        }
    });
    if let Some((lease, owner)) = running {
        let (them, us) = if sharing {
            ("alone (no Redis)", "sharing the work through Redis")
        } else {
            ("sharing the work through Redis", "alone (no Redis)")
        };
        return Err(failed(format!(
            "executor {owner} runs {them} (it holds the lease {lease}); this one would run \
             {us} and both would act on every decision: give every executor the same \
             REDIS_URL, or none (a stopped executor's lease lapses within a few seconds)"
        )));
    }
    delete_readers_left(js, sharing).await
}

/// Deletes the plan stream's durable readers that executors running the other way than
/// `sharing` left.
async fn delete_readers_left(js: &JetStream, sharing: bool) -> Result<(), BusError> {
    use futures::StreamExt;
    let failed = |detail: String| BusError::Consumer {
        stream: Phase::Plan.stream().to_owned(),
        detail,
    };
    let stream = js
        .get_stream(Phase::Plan.stream())
        .await
        .map_err(|e| failed(format!("{e}; run `mapek streams apply`")))?;
    let mut names = stream.consumer_names();
    let mut left = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| failed(format!("listing readers: {e}")))?;
        let other_way = if sharing {
            name == DURABLE
        } else {
            is_partition_reader(&name)
        };
        if other_way {
            left.push(name);
        }
    }
    for name in left {
        // Executors starting together each try; whoever comes second finds it gone.
        match stream.delete_consumer(&name).await {
            Ok(_) => info!(
                reader = %name,
                "deleted the plan stream's reader that executors running the other way left"
            ),
            Err(e) => {
                warn!(reader = %name, error = %e, "could not delete a reader left by executors running the other way")
            }
        }
    }
    Ok(())
}

/// How an executor that shares the work judges: under the lock, after folding every result
/// stored, knowing every command out.
pub(super) struct Judge {
    pub(super) lock: JudgeLock,
    /// Every result stored, by any executor.
    results: Follower<ActionResult>,
}

/// The shared side of judging: the executors' lock and the node leases.
pub(super) struct JudgeLock {
    leases: Arc<dyn SharedLeases>,
    /// This executor and partition, as its lock and leases name it (`host-42/p3`).
    holder: String,
    /// How long a node's lease lasts: longer than every attempt of a command.
    command_ttl: Duration,
}

/// The lease on a node while this executor's command is out to it.
pub(super) struct NodeLease {
    node: String,
    holder: String,
}

/// The lock could not be taken, or what the others did could not be read: the decision waits.
#[derive(Debug)]
pub(super) struct Paused(pub(super) String);

impl Judge {
    /// Judges `part`'s decisions, following `results`, sending commands that take at most
    /// `command_time`.
    pub(super) fn new(part: Part, results: Follower<ActionResult>, command_time: Duration) -> Self {
        let lock = JudgeLock {
            holder: format!("{}/p{}", part.shared.name, part.partition),
            leases: part.shared.leases,
            command_ttl: command_time + Duration::from_secs(10),
        };
        Self { lock, results }
    }

    /// Under the lock: folds every result stored into `interlocks` and tells them the
    /// commands out. Leases first, results second: an executor releases its lease only after
    /// its result is stored, so a command is either listed or folded, never neither.
    pub(super) async fn catch_up(&mut self, interlocks: &mut Interlocks) -> Result<(), Paused> {
        let leases = self
            .lock
            .leases
            .leases()
            .await
            .map_err(|e| Paused(e.to_string()))?;
        self.results
            .catch_up(|r| interlocks.apply(r))
            .await
            .map_err(|e| Paused(e.to_string()))?;
        interlocks.out_elsewhere(leases.iter().filter_map(|(n, h)| command_out(n, h)));
        Ok(())
    }
}

impl JudgeLock {
    /// Takes the executors' lock, trying for twice its time to live. A store error leaves
    /// the lock as it was (it expires).
    pub(super) async fn take(&self) -> Result<(), Paused> {
        let deadline = tokio::time::Instant::now() + JUDGE_LOCK_TTL * 2;
        let mut wait = Duration::from_millis(1);
        while !self
            .leases
            .try_lock(JUDGE_LOCK, &self.holder, JUDGE_LOCK_TTL)
            .await
            .map_err(|e| Paused(e.to_string()))?
        {
            if tokio::time::Instant::now() > deadline {
                return Err(Paused(format!(
                    "the executors' lock in Redis was not free within {} s",
                    (JUDGE_LOCK_TTL * 2).as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Gives the lock back.
    pub(super) async fn give_back(&self) {
        if let Err(e) = self.leases.unlock(JUDGE_LOCK, &self.holder).await {
            warn!(error = %e, "cannot give the executors' lock back; it expires by itself");
        }
    }

    /// Leases `decision`'s node for its command: `None` if another holds it.
    pub(super) async fn lease(&self, decision: &Decision) -> Result<Option<NodeLease>, ShareError> {
        let lease = NodeLease {
            node: decision.node.as_str().to_owned(),
            holder: self.lease_holder(decision),
        };
        let taken = self
            .leases
            .try_lease(&lease.node, &lease.holder, self.command_ttl)
            .await?;
        Ok(taken.then_some(lease))
    }

    /// Gives a node's lease back.
    pub(super) async fn release(&self, lease: NodeLease) {
        if let Err(e) = self.leases.release(&lease.node, &lease.holder).await {
            warn!(node = %lease.node, "cannot release the lease; it expires by itself: {e}");
        }
    }

    /// What this executor's lease on a node says: `<decision> <action> <executor>`.
    fn lease_holder(&self, decision: &Decision) -> String {
        format!(
            "{} {} {}",
            decision.decision_id,
            decision.action.kind.as_str(),
            self.holder
        )
    }
}

/// A command out, from a node lease and its holder text ([`JudgeLock::lease_holder`]).
fn command_out(node: &str, holder: &str) -> Option<CommandOut> {
    let mut parts = holder.splitn(3, ' ');
    let (decision_id, kind, executor) = (parts.next()?, parts.next()?, parts.next()?);
    Some(CommandOut {
        node: NodeId::new(node).ok()?,
        decision_id: decision_id.to_owned(),
        kind: ActionKind::parse(kind)?,
        executor: executor.to_owned(),
    })
}
