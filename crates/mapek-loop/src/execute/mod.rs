//! The execute worker: decisions in, commands to node agents, action results out, through
//! [`mapek_domain::Interlocks`]. docs/execute.md tells the whole of it; ADR 0007 the sharing,
//! ADR 0019 the signed results.
//!
//! # Layout
//! - this module: [`run`] (one executor, the others standing by), [`run_audited`] (the same,
//!   checking decisions' signatures and signing results with [`ExecutorKeys`]), and what an
//!   executor did ([`ExecuteStats`]).
//! - [`shared`]: [`run_shared`], every executor active beside the others, sharing a lock and
//!   node leases through the [`SharedLeases`] they are given (Redis).
//! - `executor`: looking at one delivery of a decision, the one judging step (under the
//!   shared lock when there is one), the command, and the result recorded.
//! - [`approvals`]: the approval gate's bucket, and [`approve`].
//! - `follower`: every result and outcome stored, folded into the interlocks in order.

mod approvals;
mod executor;
mod follower;
pub mod shared;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use mapek_bus::progress::until_read_before;
use mapek_bus::{BusError, Inbox, InboxConfig, JetStream};
use mapek_domain::{Decision, ExecuteConfig, Interlocks, Phase, Policy};
use tracing::{info, warn};

use crate::metrics::ORDER_WAITS_GIVEN_UP;

pub use approvals::{APPROVALS, approvals, approve, approver};
pub use shared::{ShareError, Shared, SharedLeases, run_shared};

use executor::Executor;
use shared::{Part, retire_the_other_way};

/// The executor's durable consumer on `MAPEK_PLAN` (`execute-p<partition>` when sharing the
/// work): the audit reads how far it acknowledged.
pub const DURABLE: &str = mapek_audit::audit::EXECUTOR_READER;
/// The pause between two attempts of a command that got no reply: an agent with no
/// subscriber fails at once, and asking again at once would change nothing.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a fetch waits for the first decision before looking at shutdown again.
const FETCH_WAIT: Duration = Duration::from_millis(500);

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
    /// Adds what `other` counted.
    pub fn add(&mut self, other: &ExecuteStats) {
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
    let mut inbox = Inbox::<Decision>::open(&js, inbox_config(&config, part.as_ref())).await?;
    let mut after = match &part {
        Some(p) => mapek_bus::layout::recorded_ancestors(&js, p.partition, p.partitions()).await,
        None => Vec::new(),
    };
    let mut worker = Executor::open(&js, client, &config, keys, kv, part).await?;
    info!(replayed = worker.stats.replayed, "executor ready");
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            batch = inbox.next_batch(FETCH_WAIT) => batch?,
            () = &mut shutdown => {
                inbox.close().await;
                break;
            }
        };
        // A node a grown partition count moved here: its decisions left in the partition it
        // came from are executed first.
        if let Some(first) = batch.first().filter(|_| !after.is_empty()) {
            let reader = (DURABLE, Phase::Plan);
            let seq = first.stream_seq();
            tokio::select! {
                read = until_read_before(&js, inbox.stream(), reader, &after, seq) => if !read {
                    ORDER_WAITS_GIVEN_UP.with_label_values(&[DURABLE]).inc();
                },
                () = &mut shutdown => {
                    inbox.close_giving_back(batch).await;
                    break;
                }
            }
            after.clear();
        }
        for delivery in batch {
            worker.handle(delivery).await?;
        }
    }
    Ok(worker.stats)
}

/// The executor's consumer on the whole plan stream, or on `part`'s partition.
fn inbox_config(config: &ExecuteConfig, part: Option<&Part>) -> InboxConfig {
    let mut inbox = match part {
        None => InboxConfig::new(DURABLE),
        Some(part) => {
            let mut c = InboxConfig::new(format!("{DURABLE}-p{}", part.partition));
            c.filter = Some(format!("mapek.plan.{}.>", part.partition));
            c
        }
    };
    // A batch of decisions whose agents do not answer takes attempts × timeout each; the ack
    // wait must outlast a batch, or decisions are redelivered while they are being acted on.
    inbox.batch = 16;
    inbox.ack_wait = Duration::from_secs(30) + command_time(config) * inbox.batch as u32;
    inbox
}

/// How long a command may take, every attempt of it.
fn command_time(config: &ExecuteConfig) -> Duration {
    let timeout = Duration::from_millis(config.command_timeout_ms);
    (timeout + RETRY_PAUSE) * config.command_attempts
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
