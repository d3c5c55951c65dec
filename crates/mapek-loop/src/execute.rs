//! The execute worker: decisions in, commands to node agents, action results out.
//! docs/execute.md tells the whole of it; in short:
//!
//! - Each decision is looked at once (`Executor::handle`): [`Interlocks::handle`] rules on
//!   it, and the verdict is sent (the command goes to `mapek.cmd.<node>` and the agent's
//!   answer, or its silence after `command_attempts`, makes the result), recorded as it is
//!   (a refusal, a dry run, an escalation), or held until the key of its decision id appears
//!   in [`APPROVALS`] ([`approve`]). A decision whose handling fails the way it will fail
//!   again ([`BusError::is_permanent`]) is looked at three times, then dead-lettered.
//! - Every result is published with an id derived from its decision, stored, folded into the
//!   interlocks, and only then is the decision acknowledged; results carry their decision's
//!   event time, so every interlock is judged in the mesh's time.
//! - Restarts: the interlocks are rebuilt from every result in `MAPEK_EXECUTE`; a decision
//!   that already has a result is acknowledged without acting again. Acks are cumulative, so
//!   a decision held for approval defers the acks of later ones until it is done.
//! - With a verifying key ([`run_audited`]) a decision is acted on only if its ML-DSA-65
//!   signature verifies and it links to the previous decision of its partition. With a result
//!   key ([`ExecutorKeys::sign`]) every result is signed before it is published, so that what
//!   it says (a refusal's escalation above all) cannot be changed unnoticed (ADR 0019).
//! - Alone ([`run`], [`run_audited`]) one executor serves the mesh. With Redis
//!   ([`run_shared`]) every copy is active: they share the plan partitions, follow every
//!   result, lease each node for a command out, and judge one decision at a time under one
//!   Redis lock, taken and given back in one place (`Executor::look_at`), so together they
//!   refuse what one would have refused (ADR 0007). The two ways do not mix: an executor
//!   refuses to start while one running the other way holds its lease.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use mapek_domain::execute::CommandOut;
use mapek_domain::{ActionKind, NodeId};
use mapek_knowledge::Redis;
use tokio::sync::oneshot;

use crate::lease::{Sharing, share_partitions};

use async_nats::jetstream::kv::{self, Store};
use mapek_bus::command::{Command, send_command};
use mapek_bus::{
    BusError, DeadLetters, Delivery, Inbox, InboxConfig, JetStream, Publisher, Subscriber,
    SubscriberConfig,
};
use mapek_codec::AvroEvent;
use mapek_domain::execute::{self, Verdict};
use mapek_domain::{
    ActionResult, ActionStatus, Decision, ExecuteConfig, Interlocks, Outcome, Phase, Policy,
};
use tracing::{info, warn};

/// The key-value bucket of approvals: key = decision id, value = who approved it.
pub const APPROVALS: &str = mapek_bus::buckets::APPROVALS;
/// The executor's durable consumer on `MAPEK_PLAN` (`execute-p<partition>` when sharing the
/// work): the audit reads how far it acknowledged.
pub const DURABLE: &str = mapek_audit::audit::EXECUTOR_READER;
/// How long approvals are kept.
const APPROVALS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The pause between two attempts of a command that got no reply: an agent with no
/// subscriber fails at once, and asking again at once would change nothing.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a fetch waits for the first decision before looking at shutdown again.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// The Redis lock executors judge under, and how long it outlives a holder that died.
const JUDGE_LOCK: &str = "execute.judge";
const JUDGE_LOCK_TTL: Duration = Duration::from_secs(5);
/// How long a decision waits before it is looked at again when Redis did not answer or
/// another executor has its command out.
const PAUSE: Duration = Duration::from_millis(500);
/// How many deliveries of a decision may fail the way they will fail again (an invalid
/// decision id, a result that cannot be stored) before it is dead-lettered.
const REFUSALS: u32 = 3;
/// How long a count of the reporting nodes is used before the next node action counts again.
const RECOUNT: Duration = Duration::from_secs(5);
/// How long catching up with the results stored may take before it is an error.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// What an executor did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecuteStats {
    /// Results read at start to rebuild the interlocks.
    pub replayed: u64,
    /// Deliveries of decisions taken from the consumer (redeliveries included).
    pub processed: u64,
    /// Results recorded as applied (dry runs and escalations included).
    pub applied: u64,
    /// Results recorded as failed.
    pub failed: u64,
    /// Results recorded as refused by an interlock.
    pub refused: u64,
    /// Times a decision was given back to wait for approval.
    pub held: u64,
    /// Redelivered decisions that already had a result, acknowledged without acting.
    pub skipped: u64,
    /// Commands sent to node agents, retries included.
    pub commands: u64,
    /// Times a decision was given back because another executor had a command out on its
    /// node or for the decision itself (sharing through Redis).
    pub busy_elsewhere: u64,
    /// Times a decision was given back because Redis did not answer (sharing through Redis).
    pub paused: u64,
    /// Decisions that kept failing the same way, stored in the dead-letter stream.
    pub dead_lettered: u64,
}

impl ExecuteStats {
    fn add(&mut self, other: &ExecuteStats) {
        self.replayed += other.replayed;
        self.processed += other.processed;
        self.applied += other.applied;
        self.failed += other.failed;
        self.refused += other.refused;
        self.held += other.held;
        self.skipped += other.skipped;
        self.commands += other.commands;
        self.busy_elsewhere += other.busy_elsewhere;
        self.paused += other.paused;
        self.dead_lettered += other.dead_lettered;
    }
}

/// The keys an executor holds: the decision key's public half, to act only on proven
/// decisions, and its own result key, to sign what it records.
#[derive(Clone, Default)]
pub struct ExecutorKeys {
    /// Checks each decision's signature and link before acting on it; `None` checks nothing.
    pub verify: Option<mapek_audit::VerifyingKey>,
    /// Signs each result (ADR 0019); `None` publishes results unsigned.
    pub sign: Option<Arc<mapek_audit::SigningKey>>,
}

impl From<Option<mapek_audit::VerifyingKey>> for ExecutorKeys {
    /// Checks decisions with `verify`, and signs nothing.
    fn from(verify: Option<mapek_audit::VerifyingKey>) -> Self {
        Self { verify, sign: None }
    }
}

/// What several executors share: a Redis, this executor's name in its leases, and how the
/// plan partitions are shared.
#[derive(Clone, Debug)]
pub struct Shared {
    redis: Redis,
    name: String,
    partitions: u32,
    ttl: Duration,
}

impl Shared {
    /// Shares through `redis`, as the executor `name` (unique among the executors: the
    /// worker's name, host and process), the 8 partitions of the plan stream, with partition
    /// leases that outlive a dead executor by [`crate::lease::DEFAULT_TTL`].
    pub fn new(redis: Redis, name: impl Into<String>) -> Self {
        Self {
            redis,
            name: name.into(),
            partitions: 8,
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

fn kv_failed(detail: String) -> BusError {
    BusError::Consumer {
        stream: format!("KV_{APPROVALS}"),
        detail,
    }
}

/// Opens the approvals bucket, creating it if it is missing (with the streams' replicas).
pub async fn approvals(js: &JetStream) -> Result<Store, BusError> {
    mapek_bus::buckets::open_or_create(
        js,
        kv::Config {
            bucket: APPROVALS.into(),
            description: "Decisions approved by a human: decision id -> approver".into(),
            history: 1,
            max_age: APPROVALS_MAX_AGE,
            ..Default::default()
        },
    )
    .await
}

/// Checks that `decision_id` can be a key: decision ids are hex, and nothing else is one.
fn check_key(decision_id: &str) -> Result<(), BusError> {
    let ok = !decision_id.is_empty()
        && decision_id.len() <= 128
        && decision_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(BusError::from(mapek_domain::Invalid::Name {
            field: "decision id",
            name: decision_id.to_owned(),
            why: "an approval's key is letters, digits, '-' and '_', at most 128 of them",
        }))
    }
}

/// Approves the decision `decision_id` on behalf of `approver`: the executor sends its action
/// the next time it looks at it (within `approval_poll_ms`). What `mapek approve` calls.
/// Approving a decision that does not exist or was already acted on changes nothing.
pub async fn approve(js: &JetStream, decision_id: &str, approver: &str) -> Result<(), BusError> {
    check_key(decision_id)?;
    let kv = approvals(js).await?;
    kv.put(decision_id, approver.to_owned().into())
        .await
        .map_err(|e| kv_failed(format!("cannot approve {decision_id}: {e}")))?;
    Ok(())
}

/// Who approved the decision `decision_id`, if anybody did.
pub async fn approver(kv: &Store, decision_id: &str) -> Result<Option<String>, BusError> {
    check_key(decision_id)?;
    let entry = kv
        .get(decision_id)
        .await
        .map_err(|e| kv_failed(format!("cannot read the approval of {decision_id}: {e}")))?;
    Ok(entry.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Runs the executor until `shutdown` completes. `client` is the connection commands are
/// sent over (the one `js` was made from will do). Checks neither signatures nor links; see
/// [`run_audited`].
pub async fn run(
    js: JetStream,
    client: async_nats::Client,
    config: ExecuteConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ExecuteStats, BusError> {
    run_audited(js, client, config, None, shutdown).await
}

/// Like [`run`]; with a verifying key, acting only on decisions signed by the holder of its
/// secret half and linked to the decision before them (links without signatures prove
/// nothing: anyone can compute a hash); with a result key, signing every result.
pub async fn run_audited(
    js: JetStream,
    client: async_nats::Client,
    config: ExecuteConfig,
    keys: impl Into<ExecutorKeys>,
    shutdown: impl Future<Output = ()>,
) -> Result<ExecuteStats, BusError> {
    retire_the_other_way(&js, false).await?;
    execute(js, client, config, keys.into(), None, shutdown).await
}

/// Whether `lease` is a partition's lease of executors that share the work (`execute.p3`).
fn is_partition_lease(lease: &str) -> bool {
    lease
        .strip_prefix(DURABLE)
        .and_then(|rest| rest.strip_prefix(".p"))
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `consumer` is a partition's reader of executors that share the work
/// (`execute-p3`).
fn is_partition_reader(consumer: &str) -> bool {
    consumer
        .strip_prefix(DURABLE)
        .and_then(|rest| rest.strip_prefix("-p"))
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Refuses to start an executor (`sharing` or alone) while one running the other way holds
/// its lease; then deletes the plan stream's durable readers the other way left.
async fn retire_the_other_way(js: &JetStream, sharing: bool) -> Result<(), BusError> {
    use futures::StreamExt;
    let stream_name = Phase::Plan.stream();
    let failed = |detail: String| BusError::Consumer {
        stream: stream_name.to_owned(),
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
    let stream = js
        .get_stream(stream_name)
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

/// Runs this executor beside others that share `shared`'s Redis, until `shutdown`: the plan
/// partitions are shared among the live executors, and the interlocks see every executor's
/// commands and results (module docs). Checks decisions and signs results with `keys` as
/// [`run_audited`] does.
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
        execute(
            js.clone(),
            client.clone(),
            config.clone(),
            keys.clone(),
            Some(part),
            mapek_bus::until_stopped(stopped),
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
struct Part {
    partition: u32,
    shared: Shared,
}

/// The executor's loop, for the whole plan stream (`part` = `None`) or one partition.
async fn execute(
    js: JetStream,
    client: async_nats::Client,
    config: ExecuteConfig,
    keys: ExecutorKeys,
    part: Option<Part>,
    shutdown: impl Future<Output = ()>,
) -> Result<ExecuteStats, BusError> {
    config.check()?;
    let kv = approvals(&js).await?;
    let timeout = Duration::from_millis(config.command_timeout_ms);
    let mut inbox_config = match &part {
        None => InboxConfig::new(DURABLE),
        Some(part) => {
            let mut c = InboxConfig::new(format!("{DURABLE}-p{}", part.partition));
            c.filter = Some(format!("mapek.plan.{}.>", part.partition));
            c
        }
    };
    // A batch of decisions whose agents do not answer takes attempts × timeout each; the ack
    // wait must outlast a batch, or decisions are redelivered while they are being acted on.
    inbox_config.batch = 16;
    let command_time = (timeout + RETRY_PAUSE) * config.command_attempts;
    inbox_config.ack_wait = Duration::from_secs(30) + command_time * inbox_config.batch as u32;
    let mut inbox = Inbox::<Decision>::open(&js, inbox_config).await?;
    let mut interlocks = Interlocks::new(config.clone());
    // Known before the results are folded, so that as much history is kept as the longest
    // blast-radius window needs.
    let policies = learn_recorded_policies(&js, &mut interlocks).await?;
    let mut follower = Follower::<ActionResult>::open(&js).await?;
    let replayed = follower.catch_up(|r| interlocks.apply(r)).await?;
    let mut outcomes = Follower::<Outcome>::open(&js).await?;
    outcomes.catch_up(|o| interlocks.apply_outcome(o)).await?;
    let judge = match part {
        None => {
            // Alone, the executor folds its own results as it records them.
            drop(follower);
            None
        }
        Some(part) => Some(Judge {
            lock: JudgeLock {
                holder: format!("{}/p{}", part.shared.name, part.partition),
                redis: part.shared.redis,
                command_ttl: command_time + Duration::from_secs(10),
            },
            follower,
        }),
    };
    let mut worker = Executor {
        interlocks,
        publisher: Publisher::new(js.clone()),
        client,
        js: js.clone(),
        counted: None,
        outcomes,
        kv,
        policies,
        held: BTreeSet::new(),
        deferred: None,
        chain: keys.verify.map(|k| mapek_audit::Chain::new(Some(k))),
        signer: keys.sign,
        judge,
        refused: BTreeMap::new(),
        dead_letters: DeadLetters::new(js.clone()),
        stats: ExecuteStats {
            replayed,
            ..ExecuteStats::default()
        },
    };
    info!(replayed, "executor ready");
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            batch = inbox.next_batch(FETCH_WAIT) => batch?,
            () = &mut shutdown => {
                inbox.close().await;
                break;
            }
        };
        for delivery in batch {
            worker.handle(delivery).await?;
        }
    }
    Ok(worker.stats)
}

/// Teaches `interlocks` the blast radius of every policy recorded in `MAPEK_CONFIG`; returns
/// the bucket, to learn later ones from, if a plan worker made it yet (the executor never
/// makes it: its identity may not).
async fn learn_recorded_policies(
    js: &JetStream,
    interlocks: &mut Interlocks,
) -> Result<Option<Store>, BusError> {
    let recorded = mapek_bus::config_store::read(js).await?;
    for (hash, text) in &recorded.policies {
        learn_policy(interlocks, hash, text);
    }
    Ok(mapek_bus::config_store::open_existing(js).await)
}

/// Teaches `interlocks` the policy `text`, recorded under `hash` (its SHA-256).
fn learn_policy(interlocks: &mut Interlocks, hash: &str, text: &str) {
    match Policy::parse(text) {
        Ok(policy) => interlocks.learn_policy(policy),
        // Recorded by a plan worker that parsed it, so only another version's policy.
        Err(e) => warn!(policy = hash, "cannot read a recorded policy: {e}"),
    }
}

/// Every `E` stored (results in `MAPEK_EXECUTE`, outcomes in `MAPEK_KNOWLEDGE`), followed in
/// order, to be folded into the interlocks.
struct Follower<E> {
    events: Subscriber<E>,
    stream: Stream,
    /// The stream sequence of the latest event folded.
    folded: u64,
}

impl<E: AvroEvent> Follower<E> {
    async fn open(js: &JetStream) -> Result<Self, BusError> {
        let name = E::PHASE.stream();
        let stream = js.get_stream(name).await.map_err(|e| BusError::Consumer {
            stream: name.to_owned(),
            detail: format!("{e}; run `mapek streams apply`"),
        })?;
        let events = Subscriber::<E>::open(js, SubscriberConfig::all()).await?;
        Ok(Self {
            events,
            stream,
            folded: 0,
        })
    }

    /// Folds every event stored by now with `fold`; returns how many.
    async fn catch_up(&mut self, mut fold: impl FnMut(&E)) -> Result<u64, BusError> {
        let name = E::PHASE.stream();
        let failed = |detail: String| BusError::Consumer {
            stream: name.to_owned(),
            detail,
        };
        let last = self
            .stream
            .info()
            .await
            .map_err(|e| failed(format!("cannot read how many events are stored: {e}")))?
            .state
            .last_sequence;
        let mut folded = 0;
        while self.folded < last {
            let received = tokio::time::timeout(CATCH_UP_WAIT, self.events.next())
                .await
                .map_err(|_| {
                    failed(format!(
                        "events up to {last} are stored, but none after {} arrived within {} s",
                        self.folded,
                        CATCH_UP_WAIT.as_secs()
                    ))
                })?
                .ok_or_else(|| failed("the subscription ended".into()))??;
            // What does not decode cannot be folded; no mapek worker wrote it.
            if let Ok(event) = received.event {
                fold(&event);
                folded += 1;
            }
            self.folded = received.stream_seq;
        }
        Ok(folded)
    }
}

/// How an executor that shares the work judges: under the Redis lock, after folding every
/// result stored, knowing every command out.
struct Judge {
    lock: JudgeLock,
    follower: Follower<ActionResult>,
}

/// The Redis side of judging: the lock and the node leases.
struct JudgeLock {
    redis: Redis,
    /// This executor and partition, as its lock and leases name it (`host-42/p3`).
    holder: String,
    /// How long a node's lease lasts: longer than every attempt of a command.
    command_ttl: Duration,
}

impl Judge {
    /// Takes the lock, folds every result stored, and tells `interlocks` the commands out.
    /// A Redis error leaves the lock as it was (it expires).
    async fn begin(&mut self, interlocks: &mut Interlocks) -> Result<(), Paused> {
        let deadline = tokio::time::Instant::now() + JUDGE_LOCK_TTL * 2;
        let mut wait = Duration::from_millis(1);
        let lock = &self.lock;
        while !lock
            .redis
            .try_lock(JUDGE_LOCK, &lock.holder, JUDGE_LOCK_TTL)
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
        // Leases first, results second: an executor releases its lease only after its result
        // is stored, so a command is either listed here or folded below, never neither.
        let read = async {
            let leases = lock
                .redis
                .leases()
                .await
                .map_err(|e| Paused(e.to_string()))?;
            self.follower
                .catch_up(|r| interlocks.apply(r))
                .await
                .map_err(|e| Paused(e.to_string()))?;
            Ok(leases)
        };
        match read.await {
            Ok(leases) => {
                interlocks.out_elsewhere(leases.iter().filter_map(|(n, h)| command_out(n, h)));
                Ok(())
            }
            Err(paused) => {
                lock.end().await;
                Err(paused)
            }
        }
    }
}

impl JudgeLock {
    /// Gives the lock back.
    async fn end(&self) {
        if let Err(e) = self.redis.unlock(JUDGE_LOCK, &self.holder).await {
            warn!(error = %e, "cannot give the executors' lock back; it expires by itself");
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

/// Redis did not answer, or the lock stayed taken: the decision waits.
#[derive(Debug)]
struct Paused(String);

/// What to do with a decision's delivery once it has been looked at.
enum Next {
    /// Done with (its result is stored): acknowledge it.
    Ack,
    /// Not yet: give it back, to be looked at again after this pause.
    LookAgain(Duration),
}

/// What the interlocks ruled on a decision.
enum Judged {
    /// Nothing to send.
    Done(Next),
    /// Send its command, holding this lease on its node when sharing the work.
    Send(Option<String>),
}

/// A command out, from a node lease and its holder text ([`Judge::lease_holder`]).
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

/// The executor's state between decisions.
struct Executor {
    interlocks: Interlocks,
    publisher: Publisher,
    client: async_nats::Client,
    js: JetStream,
    /// The outcomes, folded before a node action is judged: an action whose outcome is in no
    /// longer keeps its node under action.
    outcomes: Follower<Outcome>,
    /// When the reporting nodes were last counted.
    counted: Option<tokio::time::Instant>,
    kv: Store,
    /// Where the plan workers record their policies (`MAPEK_CONFIG`): the blast radius of a
    /// decision is its policy's.
    policies: Option<Store>,
    /// Stream sequences of decisions waiting for approval: no ack may cover them.
    held: BTreeSet<u64>,
    /// The latest decision acted on whose ack a waiting decision blocks; acknowledged (with
    /// everything before it) as soon as nothing before it waits.
    deferred: Option<Delivery<Decision>>,
    /// Signatures and links of the decisions seen, per partition, with a verifying key.
    chain: Option<mapek_audit::Chain>,
    /// Signs each result before it is published, with a result key.
    signer: Option<Arc<mapek_audit::SigningKey>>,
    /// How to judge beside other executors, when sharing the work.
    judge: Option<Judge>,
    /// Stream sequences of decisions that failed the way they will fail again, and how
    /// many times: at [`REFUSALS`] they are dead-lettered.
    refused: BTreeMap<u64, u32>,
    dead_letters: DeadLetters,
    stats: ExecuteStats,
}

impl Executor {
    /// Counts the nodes reporting telemetry, the mesh's size for the blast radius, before a
    /// node action is judged, unless they were counted less than [`RECOUNT`] ago.
    async fn count_nodes(&mut self, decision: &Decision) {
        let fresh = self.counted.is_some_and(|at| at.elapsed() < RECOUNT);
        if fresh || decision.action.kind == ActionKind::Escalate {
            return;
        }
        self.counted = Some(tokio::time::Instant::now());
        match mapek_bus::streams::count_reporting_nodes(&self.js).await {
            Ok(n) => self.interlocks.mesh_reports(n),
            // Judged with the last count (or the policy's floor) until the next one.
            Err(e) => warn!(error = %e, "cannot count the mesh's nodes"),
        }
    }

    /// Handles one delivery of a decision: acknowledges it once its result is stored, gives
    /// it back to be looked at again, or dead-letters it when looking at it keeps failing
    /// the same way ([`REFUSALS`] deliveries).
    async fn handle(&mut self, delivery: Delivery<Decision>) -> Result<(), BusError> {
        let seq = delivery.stream_seq();
        self.stats.processed += 1;
        match self.look_at(&delivery, seq).await {
            Ok(Next::Ack) => {
                self.held.remove(&seq);
                self.refused.remove(&seq);
                self.ack(delivery).await
            }
            Ok(Next::LookAgain(delay)) => self.look_again(delivery, delay).await,
            Err(e) if e.is_permanent() => {
                let refusals = self.refused.entry(seq).or_default();
                *refusals += 1;
                if *refusals < REFUSALS {
                    warn!(
                        seq,
                        "a decision failed the way it will fail again ({e}): trying it again"
                    );
                    return self.look_again(delivery, PAUSE).await;
                }
                self.refused.remove(&seq);
                self.dead_letter(delivery, e).await
            }
            Err(e) => Err(e),
        }
    }

    /// Looks at a decision: records its result (acting first if the interlocks allow it), or
    /// says to look again later. When sharing the work, this is the one place the
    /// executors' lock is taken and given back.
    async fn look_at(&mut self, delivery: &Delivery<Decision>, seq: u64) -> Result<Next, BusError> {
        // Where the span of this decision's result starts (mapek_bus::trace).
        let started = std::time::SystemTime::now();
        let decision = &delivery.event;
        let cause = delivery.message().headers.as_ref();
        if self.interlocks.has_result(&decision.decision_id) {
            self.stats.skipped += 1;
            return Ok(Next::Ack);
        }
        let partition = mapek_bus::layout::partition_of(&delivery.message().subject).unwrap_or(0);
        // A decision given back and delivered again was checked the first time; later ones of
        // its partition may have moved the chain's head on since.
        let checked = self.held.contains(&seq);
        if let (false, Some(Err(broken))) = (
            checked,
            self.chain.as_mut().map(|c| c.check(partition, decision)),
        ) {
            self.know_policy(decision).await?;
            let unproven = execute::unverified(decision, &broken.to_string());
            let result = self.interlocks.escalate(unproven, decision);
            self.record(&result, cause, started).await?;
            return Ok(Next::Ack);
        }
        self.know_policy(decision).await?;
        let approved = self.approved(decision).await?;
        if let Some(stale) = self.stale(delivery, approved) {
            self.record(&stale, cause, started).await?;
            return Ok(Next::Ack);
        }
        self.count_nodes(decision).await;
        if decision.action.kind != ActionKind::Escalate {
            let interlocks = &mut self.interlocks;
            self.outcomes
                .catch_up(|o| interlocks.apply_outcome(o))
                .await?;
        }
        let judged = match self.judge.as_mut() {
            None => {
                self.rule_on(decision, approved, seq, cause, started)
                    .await?
            }
            Some(judge) => {
                if let Err(Paused(why)) = judge.begin(&mut self.interlocks).await {
                    warn!(decision = %decision.decision_id, "cannot judge beside the other executors: {why}");
                    self.stats.paused += 1;
                    return Ok(Next::LookAgain(PAUSE));
                }
                let judged = self.rule_on(decision, approved, seq, cause, started).await;
                if let Some(lock) = self.judge.as_ref().map(|j| &j.lock) {
                    lock.end().await;
                }
                judged?
            }
        };
        let lease = match judged {
            Judged::Done(next) => return Ok(next),
            Judged::Send(lease) => lease,
        };
        self.interlocks.begin(decision);
        let result = self.actuate(decision).await;
        let recorded = self.record(&result, cause, started).await;
        if let (Some(holder), Some(lock)) = (&lease, self.judge.as_ref().map(|j| &j.lock)) {
            // The result is stored: whoever judges next folds it before the lease is gone.
            if let Err(e) = lock.redis.release(decision.node.as_str(), holder).await {
                warn!(node = %decision.node, "cannot release the lease; it expires by itself: {e}");
            }
        }
        recorded.map(|()| Next::Ack)
    }

    /// Learns the blast radius of `decision`'s policy from where the plan workers recorded it,
    /// the first time a node action of that policy is judged. A policy not recorded stays
    /// unknown, and the interlocks refuse the action.
    async fn know_policy(&mut self, decision: &Decision) -> Result<(), BusError> {
        let hash = &decision.policy_hash;
        if decision.action.kind == ActionKind::Escalate || self.interlocks.knows_policy(hash) {
            return Ok(());
        }
        if self.policies.is_none() {
            self.policies = mapek_bus::config_store::open_existing(&self.js).await;
        }
        let Some(policies) = &self.policies else {
            return Ok(());
        };
        if let Some(text) = mapek_bus::config_store::policy(policies, hash).await? {
            learn_policy(&mut self.interlocks, hash, &text);
        }
        Ok(())
    }

    /// Whether a human approved `decision`, for an action that needs it.
    async fn approved(&mut self, decision: &Decision) -> Result<bool, BusError> {
        let config = self.interlocks.config();
        if !config.require_approval.required_for(decision.action.kind) {
            return Ok(false);
        }
        Ok(approver(&self.kv, &decision.decision_id).await?.is_some())
    }

    /// The result of a decision that waited longer than `max_decision_wait_ms` to be
    /// looked at (unless approved): acting on the mesh as it was then could do harm.
    fn stale(&self, delivery: &Delivery<Decision>, approved: bool) -> Option<ActionResult> {
        let max_wait = self.interlocks.config().max_decision_wait_ms as i64;
        if max_wait == 0 || approved {
            return None;
        }
        // Read from the message's reply subject only when a limit applies.
        let waited = waited_ms(delivery);
        let refused =
            (waited > max_wait).then(|| execute::stale(&delivery.event, waited, max_wait));
        refused.map(|r| self.interlocks.escalate(r, &delivery.event))
    }

    /// Judges a decision with the interlocks (under the executors' lock when sharing the
    /// work): records a refusal, a dry run or an escalation, holds one that waits for
    /// approval, or says to send its command, with its node's lease taken when sharing.
    async fn rule_on(
        &mut self,
        decision: &Decision,
        approved: bool,
        seq: u64,
        cause: Option<&async_nats::HeaderMap>,
        started: std::time::SystemTime,
    ) -> Result<Judged, BusError> {
        // Looked at again here: another executor may have recorded it meanwhile.
        if self.interlocks.has_result(&decision.decision_id) {
            self.stats.skipped += 1;
            return Ok(Judged::Done(Next::Ack));
        }
        if self
            .interlocks
            .out_elsewhere_for(&decision.decision_id)
            .is_some()
        {
            // Its partition moved while another executor was acting on it.
            self.stats.busy_elsewhere += 1;
            return Ok(Judged::Done(Next::LookAgain(PAUSE)));
        }
        match self.interlocks.handle(decision, approved) {
            Verdict::AwaitApproval(refusal) => {
                if !self.held.contains(&seq) {
                    info!(decision = %decision.decision_id, "{refusal}");
                }
                self.stats.held += 1;
                let poll = Duration::from_millis(self.interlocks.config().approval_poll_ms);
                Ok(Judged::Done(Next::LookAgain(poll)))
            }
            // Recorded under the lock: a dry run counts toward the others' interlocks.
            Verdict::Record(result) => {
                self.record(&result, cause, started).await?;
                Ok(Judged::Done(Next::Ack))
            }
            Verdict::Send => Ok(self.lease(decision).await),
        }
    }

    /// Takes the lease on the decision's node when sharing the work; alone, there is none.
    async fn lease(&mut self, decision: &Decision) -> Judged {
        let Some(lock) = self.judge.as_ref().map(|j| &j.lock) else {
            return Judged::Send(None);
        };
        let holder = lock.lease_holder(decision);
        let taken = lock
            .redis
            .try_lease(decision.node.as_str(), &holder, lock.command_ttl)
            .await;
        // Listed free a moment ago under the lock: a lease taken since then was taken without
        // it (a lock that expired). Wait.
        match taken {
            Ok(true) => return Judged::Send(Some(holder)),
            Ok(false) => self.stats.busy_elsewhere += 1,
            Err(e) => {
                warn!(decision = %decision.decision_id, "cannot lease {}: {e}", decision.node);
                self.stats.paused += 1;
            }
        }
        Judged::Done(Next::LookAgain(PAUSE))
    }

    /// Stores a decision that keeps failing the same way in the dead-letter stream with the
    /// reason, and acknowledges it: the decisions after it go on.
    async fn dead_letter(
        &mut self,
        delivery: Delivery<Decision>,
        error: BusError,
    ) -> Result<(), BusError> {
        let reason = format!("the executor failed on it {REFUSALS} times: {error}");
        warn!(decision = %delivery.event.decision_id, "dead-lettered: {reason}");
        self.dead_letters
            .reject(Phase::Plan, delivery.message(), reason)
            .await?;
        crate::metrics::DEAD_LETTERS
            .with_label_values(&[DURABLE])
            .inc();
        self.stats.dead_lettered += 1;
        self.held.remove(&delivery.stream_seq());
        self.ack(delivery).await
    }

    /// Gives `delivery` back to be looked at again after `delay`: no ack may cover it until
    /// then (acks are cumulative), so it is held.
    async fn look_again(
        &mut self,
        delivery: Delivery<Decision>,
        delay: Duration,
    ) -> Result<(), BusError> {
        self.held.insert(delivery.stream_seq());
        delivery.retry_after(delay).await
    }

    /// Sends the decision's command until the agent answers or the attempts run out.
    async fn actuate(&mut self, decision: &Decision) -> ActionResult {
        let config = self.interlocks.config();
        let attempts = config.command_attempts;
        let timeout = Duration::from_millis(config.command_timeout_ms);
        let cmd = Command {
            decision_id: decision.decision_id.clone(),
            action: decision.action.clone(),
        };
        let mut last = String::new();
        for attempt in 1..=attempts {
            self.stats.commands += 1;
            match send_command(&self.client, &decision.node, &cmd, timeout).await {
                Ok(reply) if reply.ok => return execute::applied(decision, attempt),
                Ok(reply) => return execute::failed(decision, &reply.detail, attempt),
                Err(e) => {
                    last = match e {
                        BusError::Publish { detail, .. } => detail,
                        other => other.to_string(),
                    };
                    if attempt < attempts {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        }
        let reason = format!(
            "no reply within {} after {attempts} attempts: {last}",
            duration(timeout)
        );
        execute::failed(decision, &reason, attempts)
    }

    /// Signs `result` with the result key if there is one, publishes it (in the trace of the
    /// decision's message, `cause`, its span from `started`), waits until it is stored, and
    /// folds it into the interlocks.
    async fn record(
        &mut self,
        result: &ActionResult,
        cause: Option<&async_nats::HeaderMap>,
        started: std::time::SystemTime,
    ) -> Result<(), BusError> {
        let signed = self.signer.as_ref().map(|key| {
            let mut signed = result.clone();
            // Only a broken liboqs fails here (the key's size was checked when it was
            // loaded); the result then goes out unsigned and the audit names it, which beats
            // holding the decision back.
            if let Err(e) = key.sign_result(&mut signed) {
                tracing::error!(decision = %result.decision_id, error = %e, "cannot sign the result");
            }
            signed
        });
        let result = signed.as_ref().unwrap_or(result);
        self.publisher
            .publish_traced(result, cause, started)
            .await?;
        self.publisher
            .flush_stored(&Phase::Execute.stored_filter(None))
            .await?;
        self.interlocks.apply(result);
        match result.status {
            ActionStatus::Applied => self.stats.applied += 1,
            ActionStatus::Failed => {
                warn!(decision = %result.decision_id, node = %result.node, "{}", result.reason);
                self.stats.failed += 1;
            }
            ActionStatus::Refused => {
                info!(decision = %result.decision_id, node = %result.node, "{}", result.reason);
                self.stats.refused += 1;
            }
        }
        Ok(())
    }

    /// Acknowledges `delivery` (and every earlier one), unless a decision before it waits
    /// for approval: then it is kept, to be acknowledged once nothing before it waits.
    async fn ack(&mut self, delivery: Delivery<Decision>) -> Result<(), BusError> {
        let blocked = |seq: u64, held: &BTreeSet<u64>| held.first().is_some_and(|&w| w < seq);
        // Read from the reply subject once: it is compared up to three times below.
        let seq = delivery.stream_seq();
        if blocked(seq, &self.held) {
            if self.deferred.as_ref().is_none_or(|d| d.stream_seq() < seq) {
                self.deferred = Some(delivery);
            }
            return Ok(());
        }
        // The deferred decision is acknowledged first: the server ignores a cumulative ack
        // of a message delivered before one it already acknowledged, and a decision that
        // waited has been delivered again since. Acking this one after is then a no-op, or
        // covers it if the first ack was ignored.
        match self.deferred.take() {
            Some(d) if d.stream_seq() > seq => {
                if blocked(d.stream_seq(), &self.held) {
                    self.deferred = Some(d);
                } else {
                    d.ack().await?;
                }
            }
            _ => {}
        }
        delivery.ack().await
    }
}

/// A command timeout for a sentence: `2 s`, `200 ms`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// How long a delivered message waited since the server stored it, by this machine's clock.
fn waited_ms<E>(delivery: &Delivery<E>) -> i64 {
    delivery
        .message()
        .info()
        .map(|info| {
            let waited = time::OffsetDateTime::now_utc() - info.published;
            waited.whole_milliseconds() as i64
        })
        .unwrap_or(0)
}
