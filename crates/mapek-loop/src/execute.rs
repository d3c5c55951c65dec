//! The execute worker: decisions in, commands to node agents, action results out.
//!
//! For each decision it asks [`Interlocks::handle`] what to do, then:
//! - **send**: takes the node's lease and sends the command to `mapek.cmd.<node>`
//!   ([`send_command`]), waiting `command_timeout_ms` for a reply and trying up to
//!   `command_attempts` times when none comes. The agent's answer makes the result applied or
//!   failed (with the agent's detail); no answer at all makes it failed ("no reply within 2 s
//!   after 3 attempts: …"). An agent that answers "failed" is not asked again.
//! - **record**: a refusal (with the interlock's reason), a dry run (applied, `dry_run`, nothing
//!   sent) or an escalation (applied, nothing sent) is recorded as it is.
//! - **wait for approval**: nothing is recorded; the delivery is given back with a delay of
//!   `approval_poll_ms` ([`mapek_bus::Delivery::retry_after`]) and looked at again until the
//!   key of its decision id appears in the key-value bucket [`APPROVALS`] ([`approve`]).
//!
//! Every result is published with an id derived from its decision, stored (flushed), folded
//! into the interlocks, and only then is the decision acknowledged. Results carry their
//! decision's event time, so every interlock is judged in the mesh's time.
//!
//! # Restarts and redeliveries
//! On start the interlocks are rebuilt by reading every result in `MAPEK_EXECUTE` from the
//! start. A decision that already has a result (the worker died between publishing it and the
//! ack) is acknowledged without acting again, so a node never gets the same order twice from
//! a redelivery.
//!
//! The inbox acknowledges cumulatively (one ack covers every earlier message), so a decision
//! waiting for approval must not be covered by the ack of a later one: while one waits, later
//! decisions are acted on and recorded but their ack is deferred until nothing before them
//! waits. Should the worker stop meanwhile, they come back, are recognised by their result,
//! and are acknowledged without acting again.
//!
//! # Signatures
//! With a verifying key ([`run_audited`]), a decision is acted on only if its ML-DSA-65
//! signature verifies and its `prev_hash` links to the previous decision of its partition
//! ([`mapek_audit::Chain`]); one that fails is recorded as refused ("audit: …"). After a
//! restart, the first decision of each partition starts the chain again.
//!
//! One executor runs for the whole mesh: the rate limit and the blast radius are global.
//! Sharing leases and buckets between several executors (Redis, per DESIGN.md) is not done.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Store};
use mapek_bus::command::{Command, send_command};
use mapek_bus::{
    BusError, Delivery, Inbox, InboxConfig, JetStream, Publisher, Subscriber, SubscriberConfig,
};
use mapek_domain::execute::{self, Verdict};
use mapek_domain::{ActionResult, ActionStatus, Decision, ExecuteConfig, Interlocks, Phase};
use tracing::{info, warn};

/// The key-value bucket of approvals: key = decision id, value = who approved it.
pub const APPROVALS: &str = "MAPEK_APPROVALS";
/// The executor's durable consumer on `MAPEK_PLAN`.
pub const DURABLE: &str = "execute";
/// How long approvals are kept.
const APPROVALS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
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
}

fn kv_failed(detail: String) -> BusError {
    BusError::Consumer {
        stream: format!("KV_{APPROVALS}"),
        detail,
    }
}

/// Opens the approvals bucket, creating it if it is missing.
pub async fn approvals(js: &JetStream) -> Result<Store, BusError> {
    match js.get_key_value(APPROVALS).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: APPROVALS.into(),
                description: "Decisions approved by a human: decision id -> approver".into(),
                history: 1,
                max_age: APPROVALS_MAX_AGE,
                ..Default::default()
            })
            .await
            .map_err(|e| kv_failed(format!("cannot create the approvals bucket: {e}"))),
    }
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
        Err(kv_failed(format!(
            "{decision_id:?} is not a decision id (letters, digits, '-' and '_')"
        )))
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

/// Like [`run`]; with `key`, acting only on decisions signed by the holder of its secret half
/// and linked to the decision before them (links without signatures prove nothing: anyone
/// can compute a hash).
pub async fn run_audited(
    js: JetStream,
    client: async_nats::Client,
    config: ExecuteConfig,
    key: Option<mapek_audit::VerifyingKey>,
    shutdown: impl Future<Output = ()>,
) -> Result<ExecuteStats, BusError> {
    config.check()?;
    let kv = approvals(&js).await?;
    let timeout = Duration::from_millis(config.command_timeout_ms);
    let mut inbox_config = InboxConfig::new(DURABLE);
    // A batch of decisions whose agents do not answer takes attempts × timeout each; the ack
    // wait must outlast a batch, or decisions are redelivered while they are being acted on.
    inbox_config.batch = 16;
    inbox_config.ack_wait = Duration::from_secs(30)
        + (timeout + RETRY_PAUSE) * config.command_attempts * inbox_config.batch as u32;
    let mut inbox = Inbox::<Decision>::open(&js, inbox_config).await?;
    let mut worker = Executor {
        interlocks: Interlocks::new(config.clone()),
        publisher: Publisher::new(js.clone()),
        client,
        kv,
        held: BTreeSet::new(),
        deferred: None,
        chain: key.map(|k| mapek_audit::Chain::new(Some(k))),
        stats: ExecuteStats::default(),
    };
    worker.stats.replayed = rebuild(&js, &mut worker.interlocks).await?;
    info!(replayed = worker.stats.replayed, "executor ready");
    tokio::pin!(shutdown);
    // The blast radius is a share of the whole mesh: count the reporting nodes now and
    // every 30 s.
    let every = Duration::from_secs(30);
    worker.count_nodes(&js).await;
    let mut count_nodes = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let batch = tokio::select! {
            batch = inbox.next_batch(FETCH_WAIT) => batch?,
            _ = count_nodes.tick() => {
                worker.count_nodes(&js).await;
                continue;
            }
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

/// The executor's state between decisions.
struct Executor {
    interlocks: Interlocks,
    publisher: Publisher,
    client: async_nats::Client,
    kv: Store,
    /// Stream sequences of decisions waiting for approval: no ack may cover them.
    held: BTreeSet<u64>,
    /// The latest decision acted on whose ack a waiting decision blocks; acknowledged (with
    /// everything before it) as soon as nothing before it waits.
    deferred: Option<Delivery<Decision>>,
    /// Signatures and links of the decisions seen, per partition, with a verifying key.
    chain: Option<mapek_audit::Chain>,
    stats: ExecuteStats,
}

impl Executor {
    async fn count_nodes(&mut self, js: &JetStream) {
        match mapek_bus::streams::count_reporting_nodes(js).await {
            Ok(n) => self.interlocks.mesh_reports(n),
            Err(e) => tracing::warn!(error = %e, "cannot count the mesh's nodes"),
        }
    }

    async fn handle(&mut self, delivery: Delivery<Decision>) -> Result<(), BusError> {
        let decision = &delivery.event;
        let seq = delivery.stream_seq;
        self.stats.processed += 1;
        if self.interlocks.has_result(&decision.decision_id) {
            self.held.remove(&seq);
            self.stats.skipped += 1;
            return self.ack(delivery).await;
        }
        let partition = mapek_audit::audit::partition_of(&delivery.message().subject);
        if let Some(Err(broken)) = self.chain.as_mut().map(|c| c.check(partition, decision)) {
            let result = execute::unverified(decision, &broken.to_string());
            self.record(&result, delivery.message().headers.as_ref())
                .await?;
            self.held.remove(&seq);
            return self.ack(delivery).await;
        }
        let config = self.interlocks.config();
        let approved = if config.require_approval.required_for(decision.action.kind) {
            approver(&self.kv, &decision.decision_id).await?.is_some()
        } else {
            false
        };
        let max_wait = config.max_decision_wait_ms;
        if max_wait > 0 && !approved {
            let waited = waited_ms(&delivery);
            if waited > max_wait as i64 {
                let result = mapek_domain::execute::stale(decision, waited, max_wait as i64);
                self.record(&result, delivery.message().headers.as_ref())
                    .await?;
                self.held.remove(&seq);
                return self.ack(delivery).await;
            }
        }
        let result = match self.interlocks.handle(decision, approved) {
            Verdict::AwaitApproval(refusal) => {
                if self.held.insert(seq) {
                    info!(decision = %decision.decision_id, "{refusal}");
                }
                self.stats.held += 1;
                let poll = Duration::from_millis(self.interlocks.config().approval_poll_ms);
                return delivery.retry_after(poll).await;
            }
            Verdict::Record(result) => result,
            Verdict::Send => {
                self.interlocks.begin(decision);
                self.actuate(decision).await
            }
        };
        self.record(&result, delivery.message().headers.as_ref())
            .await?;
        self.held.remove(&seq);
        self.ack(delivery).await
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

    /// Publishes `result` (in the trace of the decision's message, `cause`), waits until it
    /// is stored, and folds it into the interlocks.
    async fn record(
        &mut self,
        result: &ActionResult,
        cause: Option<&async_nats::HeaderMap>,
    ) -> Result<(), BusError> {
        self.publisher.publish_caused_by(result, cause).await?;
        self.publisher.flush().await;
        let failed = self.publisher.report().failed;
        if failed > 0 {
            return Err(BusError::Publish {
                subject: Phase::Execute.stored_filter(None),
                detail: format!(
                    "{failed} results were not acknowledged; their decisions will be redelivered"
                ),
            });
        }
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
        if blocked(delivery.stream_seq, &self.held) {
            if self
                .deferred
                .as_ref()
                .is_none_or(|d| d.stream_seq < delivery.stream_seq)
            {
                self.deferred = Some(delivery);
            }
            return Ok(());
        }
        // The deferred decision is acknowledged first: the server ignores a cumulative ack
        // of a message delivered before one it already acknowledged, and a decision that
        // waited has been delivered again since. Acking this one after is then a no-op, or
        // covers it if the first ack was ignored.
        match self.deferred.take() {
            Some(d) if d.stream_seq > delivery.stream_seq => {
                if blocked(d.stream_seq, &self.held) {
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

/// Folds every stored result into `interlocks`; returns how many.
async fn rebuild(js: &JetStream, interlocks: &mut Interlocks) -> Result<u64, BusError> {
    let config = SubscriberConfig::all();
    let mut replay = Subscriber::<ActionResult>::open(js, config).await?;
    let mut left = replay.pending_at_start();
    let mut replayed = 0;
    while left > 0 {
        let Some(received) = replay.next().await else {
            break;
        };
        let received = received?;
        // A result that does not decode cannot be folded; it was not written by an executor.
        if let Ok(result) = received.event {
            interlocks.apply(&result);
            replayed += 1;
        }
        left = received.pending;
    }
    Ok(replayed)
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
