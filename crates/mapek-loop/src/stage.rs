//! The loop every phase worker runs: input from a durable inbox, pure step, output published,
//! input acknowledged.
//!
//! A [`Stage`] is a phase's pure logic behind one method. [`run_stage`] rebuilds the stage's
//! state by replaying what its consumer already acknowledged (publishing nothing), then takes
//! new input: it steps every input and publishes every output at once, and every
//! [`StageConfig::ack_every`] inputs or [`StageConfig::ack_after`] (whichever comes first, and
//! whenever the input runs dry) it waits until the outputs so far are stored and only then
//! acknowledges the inputs, all with one cumulative ack. A crash at any point redelivers
//! input whose outputs may already be stored; outputs have deterministic ids, so the second
//! copy is dropped as a duplicate. Nothing is lost and nothing doubled. The stored copy is
//! the one that counts, so the stage must make that same copy again: a stage whose step
//! consults something outside the log (the planner's knowledge) answers such input with what
//! its stored output recorded ([`Stage::prepare`]).
//!
//! A stage reading one partition of several waits, before its first input, until the
//! partitions its own descends from have read what was stored before it
//! ([`StageConfig::count`]): after the partition count grew, a node moved here is then
//! decided after the events of it left in its old partition.
//!
//! Acknowledging a run of inputs at once rather than each batch costs the server one ack
//! instead of one per message or two when the loop keeps up with the nodes (its batches are
//! then a message or two), and lets the next input be stepped while the outputs of the last
//! are still on their way to the server.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mapek_bus::{
    BusError, Delivery, Inbox, InboxConfig, JetStream, Publisher, StartAt, Subscriber,
};
use mapek_codec::AvroEvent;
use mapek_domain::{Event, Phase};

use crate::metrics;

/// A phase's pure logic: one input in, the events it causes out.
pub trait Stage {
    /// What the stage reads.
    type In: AvroEvent + Send + Sync + 'static;
    /// What it emits.
    type Out: AvroEvent + Send + Sync + 'static;

    /// Folds `input` into the state and returns what it causes, in a deterministic order.
    fn step(&mut self, input: &Self::In) -> Vec<Self::Out>;

    /// Folds an input its consumer already acknowledged, while the state is rebuilt at
    /// start; what it causes was published then and is not published again. The default is
    /// [`Stage::step`]; a stage whose step consults something outside the log (the planner's
    /// knowledge) overrides it to fold what was recorded instead.
    fn rebuild_step(&mut self, input: &Self::In) {
        self.step(input);
    }

    /// Called once at start, before the rebuild (also when nothing was acknowledged yet), to
    /// load from the log what [`Stage::rebuild_step`] needs, and what [`Stage::step`] needs
    /// for input that a previous reader stepped, published the outputs of and did not
    /// acknowledge: that input is delivered again, its outputs are already stored, and the
    /// step must make those same outputs (and fold them) rather than ones of its own, which
    /// would be dropped as duplicates while the state went on from them. The default loads
    /// nothing.
    fn prepare(
        &mut self,
        js: &JetStream,
        partition: Option<u32>,
    ) -> impl Future<Output = Result<(), BusError>> + Send {
        let _ = (js, partition);
        async { Ok(()) }
    }
}

/// Where a stage reads from.
#[derive(Clone, Debug)]
pub struct StageConfig {
    /// The durable consumer's name; one per partition (`analyze-p3`).
    pub durable: String,
    /// The input partition (`0..8`), or the whole stream if `None`.
    pub partition: Option<u32>,
    /// How long a fetch waits for the first message.
    pub fetch_wait: Duration,
    /// Acknowledge at the latest after this many inputs…
    pub ack_every: u64,
    /// …or this long after the oldest input not acknowledged yet was taken.
    pub ack_after: Duration,
    /// How many partitions the phase has, for a partition's stage: before its first input it
    /// waits ([`mapek_bus::progress::until_read_before`]) until the partitions its own
    /// descends from ([`mapek_bus::layout::recorded_ancestors`]) have read what was stored
    /// before it, so that a node a grown count moved here is decided after the events of it
    /// left in its old partition (ADR 0024). `None`: no wait.
    pub count: Option<u32>,
}

/// Inputs a stage acknowledges at once at most, by default: with the pull requests' batch of
/// 256, well under the server's 1 000 unacknowledged messages per consumer.
pub const ACK_EVERY: u64 = 64;
/// How long an input waits for its acknowledgement at most, by default.
pub const ACK_AFTER: Duration = Duration::from_millis(20);

impl StageConfig {
    /// Reads partition `partition` (or all) through the durable consumer `<phase>[-p<N>]`.
    pub fn new(phase: &str, partition: Option<u32>) -> Self {
        let durable = match partition {
            Some(p) => format!("{phase}-p{p}"),
            None => phase.to_owned(),
        };
        Self {
            durable,
            partition,
            fetch_wait: Duration::from_millis(500),
            ack_every: ACK_EVERY,
            ack_after: ACK_AFTER,
            count: None,
        }
    }

    /// Partition `partition` of `count` of `phase`, read after the partitions it descends
    /// from ([`StageConfig::count`]).
    pub fn partition_of(phase: &str, partition: u32, count: u32) -> Self {
        Self {
            count: Some(count),
            ..Self::new(phase, Some(partition))
        }
    }
}

/// What a stage did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Inputs replayed at start to rebuild the state.
    pub replayed: u64,
    /// Inputs taken from the consumer.
    pub processed: u64,
    /// Outputs published (duplicates of already stored ones included).
    pub emitted: u64,
}

impl StageStats {
    /// Adds what `other` counted.
    pub fn add(&mut self, other: &StageStats) {
        self.replayed += other.replayed;
        self.processed += other.processed;
        self.emitted += other.emitted;
    }
}

/// The stored-subject filter of one partition of `In`'s stream, or of all of it.
pub fn partition_filter<In: AvroEvent>(partition: Option<u32>) -> String {
    match partition {
        Some(p) => format!("mapek.{}.{p}.>", In::PHASE.token()),
        None => In::PHASE.stored_filter(None),
    }
}

/// Runs `stage` until `shutdown` completes.
pub async fn run_stage<S: Stage>(
    js: JetStream,
    mut stage: S,
    config: StageConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<StageStats, BusError> {
    let mut inbox_config = InboxConfig::new(config.durable.clone());
    inbox_config.filter = config.partition.map(|p| partition_filter::<S::In>(Some(p)));
    let mut inbox = Inbox::<S::In>::open(&js, inbox_config).await?;
    let mut stats = StageStats {
        replayed: rebuild(&js, &mut inbox, &mut stage, config.partition).await?,
        ..Default::default()
    };
    // The last input stepped. A server that takes over a consumer's leadership may deliver
    // again what the old leader had delivered and not yet seen acknowledged; stepping it a
    // second time would fold it twice into the state, which replay would not. (A delivery
    // that never arrived is not skipped this way when it comes again: the inbox fails at the
    // first delivery after it, and the stage is started again from the ack floor.)
    let mut stepped_through = inbox.acked_through();
    let mut publisher = Publisher::new(js.clone());
    let mut after = match (config.partition, config.count) {
        (Some(p), Some(count)) => mapek_bus::layout::recorded_ancestors(&js, p, count).await,
        _ => Vec::new(),
    };
    let reader = config
        .durable
        .rsplit_once("-p")
        .map_or(config.durable.as_str(), |(reader, _)| reader);
    // The metrics' label lookups (a hash and a lock each) once, not per event.
    let phase = metrics_label::<S>();
    let step_seconds = metrics::STEP_SECONDS.with_label_values(&[phase]);
    let batch_seconds = metrics::BATCH_SECONDS.with_label_values(&[phase]);
    let events_in = metrics::EVENTS_IN.with_label_values(&[phase]);
    let events_out = metrics::EVENTS_OUT.with_label_values(&[phase]);
    let pending = metrics::CONSUMER_PENDING.with_label_values(&[phase, &config.durable]);
    // The last input taken and not acknowledged yet, how many there are, and since when.
    let mut unacked: Option<Delivery<S::In>> = None;
    let mut unacked_count = 0;
    let mut unacked_since = Instant::now();
    tokio::pin!(shutdown);
    loop {
        // With inputs waiting for their ack, wait for more only until their ack is due.
        let wait = match unacked {
            Some(_) => config
                .ack_after
                .saturating_sub(unacked_since.elapsed())
                .min(config.fetch_wait),
            None => config.fetch_wait,
        };
        let mut batch = tokio::select! {
            batch = inbox.next_batch(wait) => batch?,
            () = &mut shutdown => {
                acknowledge::<_, S::Out>(&mut publisher, unacked.take(), &pending).await?;
                inbox.close().await;
                break;
            }
        };
        if let Some(first) = batch.first().filter(|_| !after.is_empty()) {
            let seq = first.stream_seq();
            tokio::select! {
                read = mapek_bus::progress::until_read_before(
                    &js, inbox.stream(), (reader, S::In::PHASE), &after, seq,
                ) => if !read {
                    metrics::ORDER_WAITS_GIVEN_UP.with_label_values(&[reader]).inc();
                },
                () = &mut shutdown => {
                    inbox.close_giving_back(batch).await;
                    break;
                }
            }
            after.clear();
        }
        let started = Instant::now();
        let mut outputs = 0;
        let mut decided_at = Vec::new();
        for delivery in &batch {
            let seq = delivery.stream_seq();
            if seq != 0 && seq <= stepped_through {
                tracing::debug!(seq, phase, "skipping an input delivered again");
                continue;
            }
            stepped_through = seq;
            let step_started = Instant::now();
            let outs = stage.step(&delivery.event);
            step_seconds.observe(step_started.elapsed().as_secs_f64());
            if S::Out::PHASE == Phase::Plan && !outs.is_empty() {
                decided_at.push(delivery.event.ts_ms());
            }
            let cause = delivery.message().headers.as_ref();
            // The outputs' spans start with the step (mapek_bus::trace); the clock is read
            // only for a step that has outputs.
            let span_started = if outs.is_empty() {
                std::time::SystemTime::UNIX_EPOCH
            } else {
                std::time::SystemTime::now() - step_started.elapsed()
            };
            for out in outs {
                publisher.publish_traced(&out, cause, span_started).await?;
                stats.emitted += 1;
                outputs += 1;
            }
        }
        let taken = batch.len() as u64;
        // The last is kept for its ack; the others are dropped where they lie.
        if let Some(last) = batch.pop() {
            if unacked.is_none() {
                unacked_since = started;
            }
            unacked = Some(last);
            unacked_count += taken;
        }
        // Acknowledge the inputs only once their outputs are stored: when enough are
        // waiting, when the oldest has waited long enough, or when no more input came.
        if unacked.is_some()
            && (taken == 0
                || unacked_count >= config.ack_every
                || unacked_since.elapsed() >= config.ack_after)
        {
            acknowledge::<_, S::Out>(&mut publisher, unacked.take(), &pending).await?;
            unacked_count = 0;
        }
        stats.processed += taken;
        events_in.inc_by(taken);
        events_out.inc_by(outputs);
        if taken > 0 {
            batch_seconds.observe(started.elapsed().as_secs_f64());
        }
        observe_cycle(&decided_at);
    }
    Ok(stats)
}

/// The `phase` label of a stage's metrics: the phase it reads, or `shadow` for a candidate
/// policy's planner, which reads the symptoms as the live planner does.
fn metrics_label<S: Stage>() -> &'static str {
    match S::Out::PHASE {
        Phase::Shadow => Phase::Shadow.token(),
        _ => S::In::PHASE.token(),
    }
}

/// Waits until every output published so far is stored, then acknowledges `last` and every
/// input before it with one cumulative ack.
async fn acknowledge<E, Out: AvroEvent>(
    publisher: &mut Publisher,
    last: Option<Delivery<E>>,
    pending: &prometheus::IntGauge,
) -> Result<(), BusError> {
    let Some(last) = last else {
        return Ok(());
    };
    publisher
        .flush_stored(&Out::PHASE.stored_filter(None))
        .await?;
    last.ack().await?;
    if let Ok(info) = last.message().info() {
        pending.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
    }
    Ok(())
}

/// Records the cycle time of the decisions of a plan batch: from each symptom's event time
/// (the time of the telemetry that caused it) to now, when its decision is sent (and stored
/// a moment later). Wall clock
/// against event time: it includes the agents' clock skew, which an operator wants to see.
fn observe_cycle(symptom_times_ms: &[i64]) {
    if symptom_times_ms.is_empty() {
        return;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for ts_ms in symptom_times_ms {
        let age_ms = now_ms.saturating_sub(*ts_ms).max(0);
        metrics::CYCLE_SECONDS.observe(age_ms as f64 / 1000.0);
    }
}

/// Feeds the stage everything its consumer already acknowledged, publishing nothing, after
/// [`Stage::prepare`].
async fn rebuild<S: Stage>(
    js: &JetStream,
    inbox: &mut Inbox<S::In>,
    stage: &mut S,
    partition: Option<u32>,
) -> Result<u64, BusError> {
    // Even with nothing acknowledged, a reader before this one may have stored outputs.
    stage.prepare(js, partition).await?;
    let through = inbox.acked_through();
    if through == 0 {
        return Ok(0);
    }
    let filter = partition_filter::<S::In>(partition);
    let mut replay = Subscriber::<S::In>::open_subject(js, filter, StartAt::All).await?;
    let mut replayed = 0;
    while let Some(received) = replay.next_stored().await {
        let received = received?;
        if received.stream_seq > through {
            break;
        }
        // What did not decode was dead-lettered when it was first consumed.
        if let Ok(input) = received.event {
            stage.rebuild_step(&input);
            replayed += 1;
        }
        if received.stream_seq == through {
            break;
        }
    }
    Ok(replayed)
}
