//! [`Executor`]: looking at one delivery of a decision, from its checks through the
//! interlocks' ruling to the command and its recorded result, and what then becomes of the
//! delivery (acknowledged, given back, or dead-lettered).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::kv::Store;
use mapek_bus::command::{Command, send_command};
use mapek_bus::{BusError, DeadLetters, Delivery, JetStream, Publisher};
use mapek_domain::execute::{self, Verdict};
use mapek_domain::{
    ActionKind, ActionResult, ActionStatus, Decision, ExecuteConfig, Interlocks, Outcome, Phase,
};
use tracing::{info, warn};

use super::follower::Follower;
use super::shared::{Judge, JudgeLock, NodeLease, Part, Paused};
use super::{
    DURABLE, ExecuteStats, ExecutorKeys, RETRY_PAUSE, approver, command_time, learn_policy,
    learn_recorded_policies,
};

/// How long a decision waits before it is looked at again when Redis did not answer or
/// another executor has its command out.
const PAUSE: Duration = Duration::from_millis(500);
/// How many deliveries of a decision may fail the way they will fail again (an invalid
/// decision id, a result that cannot be stored) before it is dead-lettered.
const REFUSALS: u32 = 3;
/// How long a count of the reporting nodes is used before the next node action counts again.
const RECOUNT: Duration = Duration::from_secs(5);

/// The executor's state between decisions.
pub(super) struct Executor {
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
    pub(super) stats: ExecuteStats,
}

/// One delivery of a decision being looked at.
struct Look<'a> {
    decision: &'a Decision,
    /// Its stream sequence.
    seq: u64,
    /// Its message's headers: its result goes out in their trace.
    cause: Option<&'a HeaderMap>,
    /// Where the span of its result starts (mapek_bus::trace).
    started: SystemTime,
}

/// What to do with a decision's delivery once it has been looked at.
enum Next {
    /// Done with (its result is stored): acknowledge it.
    Ack,
    /// Not yet: give it back, to be looked at again after this pause.
    LookAgain(Duration),
}

/// What judging a decision came to.
enum Judged {
    /// Nothing to send.
    Done(Next),
    /// Send its command, holding this lease on its node when sharing the work.
    Send(Option<NodeLease>),
}

impl Executor {
    /// Rebuilds the interlocks from every policy recorded, every result and every outcome
    /// stored, then stands ready to judge the whole plan stream (`part` = `None`) or one
    /// partition beside other executors.
    pub(super) async fn open(
        js: &JetStream,
        client: async_nats::Client,
        config: &ExecuteConfig,
        keys: ExecutorKeys,
        kv: Store,
        part: Option<Part>,
    ) -> Result<Self, BusError> {
        let mut interlocks = Interlocks::new(config.clone());
        // Known before the results are folded, so that as much history is kept as the longest
        // blast-radius window needs.
        let policies = learn_recorded_policies(js, &mut interlocks).await?;
        let mut results = Follower::<ActionResult>::open(js).await?;
        let replayed = results.catch_up(|r| interlocks.apply(r)).await?;
        let mut outcomes = Follower::<Outcome>::open(js).await?;
        outcomes.catch_up(|o| interlocks.apply_outcome(o)).await?;
        // Alone, the executor folds its own results as it records them: no need to follow.
        let judge = part.map(|part| Judge::new(part, results, command_time(config)));
        Ok(Self {
            interlocks,
            publisher: Publisher::new(js.clone()),
            client,
            js: js.clone(),
            outcomes,
            counted: None,
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
        })
    }

    /// Handles one delivery of a decision: acknowledges it once its result is stored, gives
    /// it back to be looked at again, or dead-letters it when looking at it keeps failing
    /// the same way ([`REFUSALS`] deliveries).
    pub(super) async fn handle(&mut self, delivery: Delivery<Decision>) -> Result<(), BusError> {
        let seq = delivery.stream_seq();
        self.stats.processed += 1;
        match self.look_at(&delivery, seq).await {
            Ok(Next::Ack) => {
                self.held.remove(&seq);
                self.refused.remove(&seq);
                self.ack(delivery).await
            }
            Ok(Next::LookAgain(delay)) => self.look_again(delivery, delay).await,
            Err(e) if e.is_permanent() => self.refuse(delivery, seq, e).await,
            Err(e) => Err(e),
        }
    }

    /// Looks at a decision: records its result (acting first when the interlocks let it), or
    /// says to look at it again later.
    async fn look_at(&mut self, delivery: &Delivery<Decision>, seq: u64) -> Result<Next, BusError> {
        let look = Look {
            decision: &delivery.event,
            seq,
            cause: delivery.message().headers.as_ref(),
            started: SystemTime::now(),
        };
        if self.interlocks.has_result(&look.decision.decision_id) {
            self.stats.skipped += 1;
            return Ok(Next::Ack);
        }
        if let Some(unproven) = self.unproven(delivery, seq).await? {
            return self.record(&unproven, &look).await.map(|()| Next::Ack);
        }
        self.know_policy(look.decision).await?;
        let approved = self.approved(look.decision).await?;
        if let Some(stale) = self.stale(delivery, approved) {
            return self.record(&stale, &look).await.map(|()| Next::Ack);
        }
        self.bring_up_to_date(look.decision).await?;
        match self.judge(&look, approved).await? {
            Judged::Done(next) => Ok(next),
            Judged::Send(lease) => self.act(&look, lease).await,
        }
    }

    /// The escalation of a decision whose signature or link does not check out, with a
    /// verifying key. A decision given back and delivered again was checked the first time;
    /// later ones of its partition may have moved the chain's head on since.
    async fn unproven(
        &mut self,
        delivery: &Delivery<Decision>,
        seq: u64,
    ) -> Result<Option<ActionResult>, BusError> {
        let Some(chain) = self.chain.as_mut() else {
            return Ok(None);
        };
        let partition = mapek_bus::layout::partition_of(&delivery.message().subject);
        let decision = &delivery.event;
        let checked = chain.check(partition.unwrap_or(0), decision);
        let (false, Err(broken)) = (self.held.contains(&seq), checked) else {
            return Ok(None);
        };
        // Its policy says whom to escalate to.
        self.know_policy(decision).await?;
        let unproven = execute::unverified(decision, &broken.to_string());
        Ok(Some(self.interlocks.escalate(unproven, decision)))
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

    /// Before a node action is judged: counts the nodes reporting telemetry (the mesh's size
    /// for the blast radius) unless they were counted less than [`RECOUNT`] ago, and folds
    /// the outcomes stored (an action whose outcome is in no longer keeps its node under
    /// action).
    async fn bring_up_to_date(&mut self, decision: &Decision) -> Result<(), BusError> {
        if decision.action.kind == ActionKind::Escalate {
            return Ok(());
        }
        if self.counted.is_none_or(|at| at.elapsed() >= RECOUNT) {
            self.counted = Some(tokio::time::Instant::now());
            match mapek_bus::streams::count_reporting_nodes(&self.js).await {
                Ok(n) => self.interlocks.mesh_reports(n),
                // Judged with the last count (or the policy's floor) until the next one.
                Err(e) => warn!(error = %e, "cannot count the mesh's nodes"),
            }
        }
        let interlocks = &mut self.interlocks;
        self.outcomes
            .catch_up(|o| interlocks.apply_outcome(o))
            .await?;
        Ok(())
    }

    /// The one judging step: the interlocks rule on the decision. When sharing the work, this
    /// is done under the executors' lock, taken here and given back on the one way out,
    /// whatever the ruling.
    async fn judge(&mut self, look: &Look<'_>, approved: bool) -> Result<Judged, BusError> {
        // Out of `self` while judging, so that ruling can borrow the rest of it.
        let Some(mut judge) = self.judge.take() else {
            return self.rule_on(look, approved).await;
        };
        let judged = match judge.lock.take().await {
            Err(paused) => Ok(self.paused(look, paused)),
            Ok(()) => {
                let judged = self.rule_on_shared(&mut judge, look, approved).await;
                judge.lock.give_back().await;
                judged
            }
        };
        self.judge = Some(judge);
        judged
    }

    /// Under the executors' lock: folds what the others did, rules, and leases the node of a
    /// command to send.
    async fn rule_on_shared(
        &mut self,
        judge: &mut Judge,
        look: &Look<'_>,
        approved: bool,
    ) -> Result<Judged, BusError> {
        if let Err(paused) = judge.catch_up(&mut self.interlocks).await {
            return Ok(self.paused(look, paused));
        }
        match self.rule_on(look, approved).await? {
            Judged::Send(_) => Ok(self.lease(&judge.lock, look.decision).await),
            done => Ok(done),
        }
    }

    /// The interlocks' ruling: a refusal, a dry run or an escalation is recorded (under the
    /// lock when sharing: it counts toward the others' interlocks), a decision that waits for
    /// approval is held, and one that passes is to be sent.
    async fn rule_on(&mut self, look: &Look<'_>, approved: bool) -> Result<Judged, BusError> {
        let decision_id = &look.decision.decision_id;
        // Looked at again here: another executor may have recorded it meanwhile.
        if self.interlocks.has_result(decision_id) {
            self.stats.skipped += 1;
            return Ok(Judged::Done(Next::Ack));
        }
        if self.interlocks.out_elsewhere_for(decision_id).is_some() {
            // Its partition moved while another executor was acting on it.
            self.stats.busy_elsewhere += 1;
            return Ok(Judged::Done(Next::LookAgain(PAUSE)));
        }
        match self.interlocks.handle(look.decision, approved) {
            Verdict::AwaitApproval(refusal) => {
                if !self.held.contains(&look.seq) {
                    info!(decision = %decision_id, "{refusal}");
                }
                self.stats.held += 1;
                let poll = Duration::from_millis(self.interlocks.config().approval_poll_ms);
                Ok(Judged::Done(Next::LookAgain(poll)))
            }
            Verdict::Record(result) => {
                self.record(&result, look).await?;
                Ok(Judged::Done(Next::Ack))
            }
            Verdict::Send => Ok(Judged::Send(None)),
        }
    }

    /// Leases the decision's node for its command; a node leased meanwhile (by an executor
    /// whose lock expired) or a store that does not answer makes the decision wait.
    async fn lease(&mut self, lock: &JudgeLock, decision: &Decision) -> Judged {
        match lock.lease(decision).await {
            Ok(Some(lease)) => return Judged::Send(Some(lease)),
            Ok(None) => self.stats.busy_elsewhere += 1,
            Err(e) => {
                warn!(decision = %decision.decision_id, "cannot lease {}: {e}", decision.node);
                self.stats.paused += 1;
            }
        }
        Judged::Done(Next::LookAgain(PAUSE))
    }

    /// The lock could not be taken or what the others did could not be read: the decision
    /// waits.
    fn paused(&mut self, look: &Look<'_>, Paused(why): Paused) -> Judged {
        let decision = &look.decision.decision_id;
        warn!(%decision, "cannot judge beside the other executors: {why}");
        self.stats.paused += 1;
        Judged::Done(Next::LookAgain(PAUSE))
    }

    /// Sends the decision's command and records what came of it. A node's lease is given
    /// back only once the result is stored, so whoever judges next folds the result before
    /// the lease is gone.
    async fn act(&mut self, look: &Look<'_>, lease: Option<NodeLease>) -> Result<Next, BusError> {
        self.interlocks.begin(look.decision);
        let result = self.actuate(look.decision).await;
        let recorded = self.record(&result, look).await;
        if let (Some(lease), Some(lock)) = (lease, self.judge.as_ref().map(|j| &j.lock)) {
            lock.release(lease).await;
        }
        recorded.map(|()| Next::Ack)
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
    /// decision's message, its span from when it was first looked at), waits until it is
    /// stored, and folds it into the interlocks.
    async fn record(&mut self, result: &ActionResult, look: &Look<'_>) -> Result<(), BusError> {
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
            .publish_traced(result, look.cause, look.started)
            .await?;
        self.publisher
            .flush_stored(&Phase::Execute.stored_filter(None))
            .await?;
        self.interlocks.apply(result);
        self.count(result);
        Ok(())
    }

    /// Counts a recorded result, and says why one failed or was refused.
    fn count(&mut self, result: &ActionResult) {
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
    }

    /// A decision that failed the way it will fail again: looked at again after a pause,
    /// until it has failed [`REFUSALS`] times; then dead-lettered.
    async fn refuse(
        &mut self,
        delivery: Delivery<Decision>,
        seq: u64,
        error: BusError,
    ) -> Result<(), BusError> {
        let refusals = self.refused.entry(seq).or_default();
        *refusals += 1;
        if *refusals < REFUSALS {
            warn!(
                seq,
                "a decision failed the way it will fail again ({error}): trying it again"
            );
            return self.look_again(delivery, PAUSE).await;
        }
        self.refused.remove(&seq);
        self.dead_letter(delivery, error).await
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
