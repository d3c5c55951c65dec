//! The projections: one consumer per stream, one transaction per fetched batch.
//!
//! A phase stored in several streams (telemetry in the mapped layout of ADR 0012,
//! `MAPEK_MONITOR_0` …) has one projection per stream, each with its own stored sequence,
//! counters and consumer; the streams are found ([`mapek_bus::layout::streams_of`]) when the
//! projections start. A node's telemetry is in one stream, so its rows see it in order.
//!
//! Each projection reads its stream from right after the sequence stored in the database
//! (the database is the truth, not the consumer's ack floor), writes a batch's rows and its
//! last sequence in one transaction, then acknowledges the batch. A crash between the commit
//! and the ack brings the batch back; its sequences are at or below the stored one and change
//! nothing. A store that goes away pauses the projection: it retries the same batch with
//! backoff, counting the failures, and goes on with no gap when the store returns. A log
//! that fails to be read (a leader election, a lost server) is waited out the same way: the
//! projection opens its consumer again from the stored sequence a second later.
//!
//! A message the store itself refuses (Postgres stores no NUL byte in text, say) would hold
//! its stream forever: a batch refused that way is written again one message at a time, and
//! a message refused [`REFUSALS`] times is a poison message. It goes to the dead-letter stream
//! (`mapek.dlq.<phase>`) with the store's reason, its sequence is recorded as skipped, and the
//! projection goes on with the next.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures::{FutureExt, StreamExt};
use mapek_bus::headers::decode_body;
use mapek_bus::{DeadLetters, JetStream, layout};
use mapek_domain::Phase;
use sqlx::AnyConnection;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::redis::Redis;
use crate::rows::{self, Events};
use crate::store::{int, refuses_the_data};
use crate::{KnowledgeError, ReadModel};

mod stats;

pub use stats::{Counts, ProjectionStats, StreamCounters};

/// The phases projected into the read model, in loop order (each through all its streams).
pub const PROJECTED: [Phase; 5] = [
    Phase::Monitor,
    Phase::Analyze,
    Phase::Plan,
    Phase::Execute,
    Phase::Knowledge,
];

/// A test hook: called with the stream's name (`MAPEK_MONITOR_1`) and the batch's last
/// sequence right after each commit; returning `true` stops the projection there, before the
/// ack, as a crash would.
pub type CrashHook = Arc<dyn Fn(&str, u64) -> bool + Send + Sync>;

/// How the projections read the log.
#[derive(Clone)]
pub struct ProjectionConfig {
    /// Durable consumers named `<prefix>-<phase>` on each of the phase's streams (their lag
    /// shows on the server), or ephemeral ones when `None` (a rebuild, which must not disturb
    /// the live consumers).
    pub durable_prefix: Option<String>,
    /// The most messages written in one transaction.
    pub batch: usize,
    /// Stop each stream once it reaches the last sequence the stream held at start, instead
    /// of following it until shutdown.
    pub until_caught_up: bool,
    /// The longest pause between two tries of a store that is down.
    pub max_backoff: Duration,
    /// Tests only: stop after a commit and before its ack (see [`CrashHook`]).
    pub crash_after_commit: Option<CrashHook>,
    /// Tests only: read from this sequence instead of after the stored one, so that messages
    /// already applied come again (they must change nothing).
    pub redeliver_from: Option<u64>,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            durable_prefix: Some("knowledge-sql".into()),
            batch: 1000,
            until_caught_up: false,
            max_backoff: Duration::from_secs(5),
            crash_after_commit: None,
            redeliver_from: None,
        }
    }
}

/// Projects every stream of the five phases into `read_model` (and hot state into `redis`)
/// until `shutdown` completes, with durable consumers named `knowledge-sql-<phase>`.
pub async fn project(
    js: JetStream,
    read_model: ReadModel,
    redis: Option<Redis>,
    shutdown: impl Future<Output = ()>,
) -> Result<ProjectionStats, KnowledgeError> {
    let stats = ProjectionStats::default();
    project_with(
        js,
        read_model,
        redis,
        ProjectionConfig::default(),
        stats.clone(),
        shutdown,
    )
    .await?;
    Ok(stats)
}

/// [`project`] with a config and counters of the caller's. Returns when `shutdown`
/// completes, when every stream is caught up (with `until_caught_up`), or at the first
/// error a projection cannot wait out (the log failed, or a test hook fired). The streams of
/// each phase are those the server has when it starts ([`layout::streams_of`]).
pub async fn project_with(
    js: JetStream,
    read_model: ReadModel,
    redis: Option<Redis>,
    config: ProjectionConfig,
    stats: ProjectionStats,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KnowledgeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for phase in PROJECTED {
        let streams = layout::streams_of(&js, phase)
            .await
            .map_err(|e| KnowledgeError::Log {
                stream: phase.stream().to_owned(),
                detail: e.to_string(),
            })?;
        for stored in streams {
            let p = Projection {
                js: js.clone(),
                read_model: read_model.clone(),
                redis: redis.clone(),
                config: config.clone(),
                counters: stats.of_stream(&stored.name),
                stream: stored.name,
                phase,
                stop: stop_rx.clone(),
            };
            tasks.spawn(async move { p.run().await });
        }
    }
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    let mut result = Ok(());
    loop {
        tokio::select! {
            () = &mut shutdown => {
                let _ = stop_tx.send(true);
                break;
            }
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => { result = Err(e); let _ = stop_tx.send(true); break; }
                Some(Err(e)) => {
                    result = Err(KnowledgeError::Log { stream: "?".into(), detail: e.to_string() });
                    let _ = stop_tx.send(true);
                    break;
                }
            },
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let (Ok(Err(e)), Ok(())) = (joined, &result) {
            result = Err(e);
        }
    }
    result
}

/// What one transaction did.
enum Commit {
    /// Written through this sequence.
    Done,
    /// Another writer advanced the stored sequence meanwhile: read it again.
    Moved,
}

/// One stream's projection.
struct Projection {
    js: JetStream,
    read_model: ReadModel,
    redis: Option<Redis>,
    config: ProjectionConfig,
    counters: Arc<StreamCounters>,
    /// The stream read, and the key of its row in `projection_offsets`.
    stream: String,
    /// The phase it stores.
    phase: Phase,
    stop: watch::Receiver<bool>,
}

impl Projection {
    fn log_failed(&self, detail: impl ToString) -> KnowledgeError {
        KnowledgeError::Log {
            stream: self.stream.clone(),
            detail: detail.to_string(),
        }
    }

    fn counters(&self) -> &StreamCounters {
        &self.counters
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits `delay`, or less if asked to stop.
    async fn pause(&mut self, delay: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn run(mut self) -> Result<(), KnowledgeError> {
        let stream_name = self.stream.clone();
        let stream_name = stream_name.as_str();
        let Some((stream, target)) = self.stream_and_end().await? else {
            return Ok(());
        };
        let mut redeliver_from = self.config.redeliver_from;
        'reopen: loop {
            if self.stopped() {
                return Ok(());
            }
            let Some(stored) = self.stored_seq().await else {
                return Ok(());
            };
            self.counters().last_seq.store(stored, Ordering::Relaxed);
            if self.config.until_caught_up && stored >= target {
                return Ok(());
            }
            let start = redeliver_from.take().unwrap_or(stored + 1).max(1);
            let durable = self
                .config
                .durable_prefix
                .as_ref()
                .map(|p| format!("{p}-{}", self.phase.token()));
            let mut messages = match self.open(&stream, start, durable.as_deref()).await {
                Ok(messages) => messages,
                Err(e) => {
                    self.log_failed_for_now(&e).await;
                    continue 'reopen;
                }
            };
            let batch = self.config.batch.max(1);
            loop {
                if self.stopped() {
                    return Ok(());
                }
                let mut stop = self.stop.clone();
                let first = tokio::select! {
                    m = tokio::time::timeout(Duration::from_millis(500), messages.next()) => m,
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                };
                let first = match first {
                    Err(_) => continue,
                    Ok(Some(Ok(m))) => m,
                    Ok(None) => {
                        self.log_failed_for_now("the consumer's messages ended")
                            .await;
                        continue 'reopen;
                    }
                    Ok(Some(Err(e))) => {
                        self.log_failed_for_now(&e.to_string()).await;
                        continue 'reopen;
                    }
                };
                let mut taken = vec![first];
                // While the stream holds more, wait a little for a full batch: a transaction
                // costs a handful of round trips, so a backlog drains in big ones. Caught up,
                // the batch is written at once.
                let fill_until = tokio::time::Instant::now() + FILL_WAIT;
                while taken.len() < batch {
                    let next = match messages.next().now_or_never() {
                        Some(next) => next,
                        None if pending(taken.last().expect("one message")) > 0 => {
                            match tokio::time::timeout_at(fill_until, messages.next()).await {
                                Ok(next) => next,
                                Err(_) => break,
                            }
                        }
                        None => break,
                    };
                    // A failed read ends the batch; the next read tells whether it lasts.
                    match next {
                        Some(Ok(m)) => taken.push(m),
                        _ => break,
                    }
                }
                let last_seq = seq(taken.last().expect("one message at least"));
                match self.write(&taken).await? {
                    None => return Ok(()),
                    Some(Commit::Moved) => continue 'reopen,
                    Some(Commit::Done) => {}
                }
                if let Some(hook) = &self.config.crash_after_commit
                    && hook(stream_name, last_seq)
                {
                    return Err(KnowledgeError::Crashed {
                        stream: stream_name.to_owned(),
                        seq: last_seq,
                    });
                }
                if durable.is_some() {
                    // One ack for the batch: the consumer acknowledges cumulatively.
                    if let Err(e) = taken.last().expect("one message").ack().await {
                        tracing::warn!(
                            stream = stream_name,
                            "ack failed (harmless: the batch is stored): {e}"
                        );
                    }
                }
                if self.config.until_caught_up && last_seq >= target {
                    return Ok(());
                }
            }
        }
    }

    /// The stream and the last sequence it holds now, waiting out a log that does not
    /// answer; an error only if the stream does not exist, `None` if asked to stop meanwhile.
    async fn stream_and_end(&mut self) -> Result<Option<(Stream, u64)>, KnowledgeError> {
        loop {
            let found = match self.js.get_stream(self.stream.as_str()).await {
                Err(e) if mapek_bus::streams::is_not_found(&e) => {
                    return Err(self.log_failed(format!("{e}; run `mapek streams apply`")));
                }
                Err(e) => Err(e.to_string()),
                Ok(stream) => match stream.get_info().await {
                    Ok(info) => Ok((stream, info.state.last_sequence)),
                    Err(e) => Err(e.to_string()),
                },
            };
            match found {
                Ok(found) => return Ok(Some(found)),
                Err(e) => self.log_failed_for_now(&e).await,
            }
            if self.stopped() {
                return Ok(None);
            }
        }
    }

    /// Opens the projection's consumer on `stream` from sequence `start` (durable, taking
    /// over the one of that name, or ephemeral). An error is the log's (a leader election, a
    /// lost server), for the caller to wait out.
    async fn open(
        &self,
        stream: &Stream,
        start: u64,
        durable: Option<&str>,
    ) -> Result<pull::Stream, String> {
        if let Some(name) = durable {
            // Taking the consumer over at the stored sequence: whatever its ack floor
            // says, the database knows what has been applied.
            let _ = stream.delete_consumer(name).await;
        }
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: durable.map(str::to_owned),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: if durable.is_some() {
                    AckPolicy::All
                } else {
                    AckPolicy::None
                },
                ack_wait: Duration::from_secs(60),
                max_ack_pending: 100_000,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot open its consumer: {e}"))?;
        consumer
            .stream()
            .max_messages_per_batch(self.config.batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| format!("cannot read its consumer: {e}"))
    }

    /// Counts and logs a failure to read the log, and pauses before the projection opens its
    /// consumer again from the stored sequence.
    async fn log_failed_for_now(&mut self, detail: &str) {
        self.counters().log_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            stream = self.stream.as_str(),
            "reading the log failed ({detail}); opening it again in 1 s"
        );
        self.pause(LOG_PAUSE).await;
    }

    /// The stored sequence, retried with backoff while the store is down; `None` if asked
    /// to stop meanwhile.
    async fn stored_seq(&mut self) -> Option<u64> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let got = sqlx::query("SELECT last_seq FROM projection_offsets WHERE stream = $1")
                .bind(self.stream.as_str())
                .fetch_optional(self.read_model.pool())
                .await
                .and_then(|r| r.map(|r| int(&r, 0)).transpose());
            match got {
                Ok(seq) => return Some(seq.unwrap_or(0) as u64),
                Err(e) => self.failed("reading its offset", e, &mut backoff).await,
            }
            if self.stopped() {
                return None;
            }
        }
    }

    /// Counts a store failure and pauses before the next try.
    async fn failed(&mut self, doing: &str, e: sqlx::Error, backoff: &mut Duration) {
        self.counters()
            .store_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            stream = self.stream.as_str(),
            "the read model at {} failed {doing}: {e}; trying again in {backoff:?}",
            self.read_model.url()
        );
        self.pause(*backoff).await;
        *backoff = (*backoff * 2).min(self.config.max_backoff);
    }

    /// Decodes a batch; what does not decode is logged and counted as skipped.
    fn decode(&self, messages: &[Message]) -> (Events, Vec<u64>) {
        let mut events = match self.phase {
            Phase::Analyze => Events::Analyze(Vec::new()),
            Phase::Plan => Events::Plan(Vec::new()),
            Phase::Execute => Events::Execute(Vec::new()),
            Phase::Knowledge => Events::Knowledge(Vec::new()),
            _ => Events::Monitor(Vec::new()),
        };
        let mut skipped = Vec::new();
        for m in messages {
            let s = seq(m);
            let h = m.headers.as_ref();
            let body = &m.payload;
            let ok = match &mut events {
                Events::Monitor(v) => decode_body(h, body).map(|e| v.push((s, e))),
                Events::Analyze(v) => decode_body(h, body).map(|e| v.push((s, e))),
                Events::Plan(v) => decode_body(h, body).map(|e| v.push((s, e))),
                Events::Execute(v) => decode_body(h, body).map(|e| v.push((s, e))),
                Events::Knowledge(v) => decode_body(h, body).map(|e| v.push((s, e))),
            };
            if let Err(e) = ok {
                tracing::warn!(stream = self.stream.as_str(), seq = s, "skipped: {e}");
                skipped.push(s);
            }
        }
        (events, skipped)
    }

    /// Writes the rows of `taken` and its last sequence in one transaction, then the hot
    /// state to Redis. A batch the store refuses is written again one message at a time
    /// ([`Projection::one_by_one`]). `None` if asked to stop meanwhile.
    async fn write(&mut self, taken: &[Message]) -> Result<Option<Commit>, KnowledgeError> {
        let last_seq = seq(taken.last().expect("one message at least"));
        let (mut events, mut skipped) = self.decode(taken);
        match self.commit(&mut events, &mut skipped, last_seq, 1).await {
            None => Ok(None),
            Some(Ok(commit)) => {
                self.hot_state(&events).await;
                Ok(Some(commit))
            }
            Some(Err(e)) => {
                tracing::warn!(
                    stream = self.stream.as_str(),
                    last_seq,
                    "the read model refused a batch ({e}); writing it one message at a time"
                );
                self.one_by_one(taken).await
            }
        }
    }

    /// Writes each message of `taken` in a transaction of its own. One the store still
    /// refuses after [`REFUSALS`] tries is a poison message: it goes to the dead-letter
    /// stream with the store's reason, its sequence is recorded as skipped, and the
    /// messages after it are written. `None` if asked to stop meanwhile.
    async fn one_by_one(&mut self, taken: &[Message]) -> Result<Option<Commit>, KnowledgeError> {
        for message in taken {
            let s = seq(message);
            let (mut events, mut skipped) = self.decode(std::slice::from_ref(message));
            let written = match self.commit(&mut events, &mut skipped, s, REFUSALS).await {
                None => return Ok(None),
                Some(Ok(commit)) => commit,
                Some(Err(e)) => {
                    self.dead_letter(message, &e).await?;
                    let (mut nothing, _) = self.decode(&[]);
                    match self.commit(&mut nothing, &mut vec![s], s, 1).await {
                        None => return Ok(None),
                        Some(Ok(commit)) => commit,
                        Some(Err(e)) => return Err(self.log_failed(format!("skipping {s}: {e}"))),
                    }
                }
            };
            if let Commit::Moved = written {
                return Ok(Some(Commit::Moved));
            }
            self.hot_state(&events).await;
        }
        Ok(Some(Commit::Done))
    }

    /// Stores `message`, which the store refused with `e`, in the dead-letter stream.
    async fn dead_letter(&self, message: &Message, e: &sqlx::Error) -> Result<(), KnowledgeError> {
        let reason = format!(
            "the read model ({:?}) refused it {REFUSALS} times: {e}",
            self.read_model.backend()
        );
        tracing::warn!(
            stream = self.stream.as_str(),
            seq = seq(message),
            "dead-lettered: {reason}"
        );
        DeadLetters::new(self.js.clone())
            .reject(self.phase, message, reason)
            .await
            .map_err(|e| self.log_failed(format!("dead-lettering a poison message: {e}")))?;
        self.counters()
            .dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the hot state of `events` to Redis, if there is one; a failure is counted and
    /// logged, as the SQL rows are stored.
    async fn hot_state(&self, events: &Events) {
        if let Some(redis) = &self.redis
            && events.len() > 0
            && let Err(e) = redis.project(events).await
        {
            self.counters()
                .redis_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stream = self.stream.as_str(),
                "hot state not written to Redis: {e}"
            );
        }
    }

    /// Writes a batch and its last sequence in one transaction, retrying while the store is
    /// unavailable. `Err` once the store has refused the data itself `refusals` times
    /// ([`refuses_the_data`]); `None` if asked to stop meanwhile.
    async fn commit(
        &mut self,
        events: &mut Events,
        skipped: &mut Vec<u64>,
        last_seq: u64,
        refusals: u32,
    ) -> Option<Result<Commit, sqlx::Error>> {
        let mut backoff = Duration::from_millis(100);
        let mut refused = 0;
        loop {
            match self.try_commit(events, skipped, last_seq).await {
                Ok(c) => return Some(Ok(c)),
                Err(e) if refuses_the_data(self.read_model.backend(), &e) => {
                    refused += 1;
                    if refused >= refusals {
                        return Some(Err(e));
                    }
                    self.failed("writing a message", e, &mut backoff).await;
                }
                Err(e) => self.failed("writing a batch", e, &mut backoff).await,
            }
            if self.stopped() {
                return None;
            }
        }
    }

    async fn try_commit(
        &self,
        events: &mut Events,
        skipped: &mut Vec<u64>,
        last_seq: u64,
    ) -> Result<Commit, sqlx::Error> {
        let mut tx = self.read_model.pool().begin().await?;
        let conn: &mut AnyConnection = &mut tx;
        let stored = sqlx::query("SELECT last_seq FROM projection_offsets WHERE stream = $1")
            .bind(self.stream.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| int(&r, 0))
            .transpose()?;
        let before = events.len() + skipped.len();
        let floor = stored.unwrap_or(0) as u64;
        events.retain_after(floor);
        skipped.retain(|s| *s > floor);
        let again = (before - events.len() - skipped.len()) as u64;
        if again > 0 {
            self.counters()
                .redelivered
                .fetch_add(again, Ordering::Relaxed);
        }
        if last_seq <= floor {
            tx.rollback().await?;
            return Ok(Commit::Done);
        }
        rows::write(conn, self.read_model.backend(), events).await?;
        let applied = events.len() as i64;
        let skip = skipped.len() as i64;
        let moved = match stored {
            None => sqlx::query(
                "INSERT INTO projection_offsets (stream, last_seq, applied, skipped) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (stream) DO NOTHING",
            )
            .bind(self.stream.as_str())
            .bind(last_seq as i64)
            .bind(applied)
            .bind(skip)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
            Some(old) => sqlx::query(
                "UPDATE projection_offsets SET last_seq = $1, applied = applied + $2, \
                 skipped = skipped + $3 WHERE stream = $4 AND last_seq = $5",
            )
            .bind(last_seq as i64)
            .bind(applied)
            .bind(skip)
            .bind(self.stream.as_str())
            .bind(old)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        } != 1;
        if moved {
            tx.rollback().await?;
            return Ok(Commit::Moved);
        }
        tx.commit().await?;
        let c = self.counters();
        c.applied.fetch_add(applied as u64, Ordering::Relaxed);
        c.skipped.fetch_add(skip as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.last_seq.store(last_seq, Ordering::Relaxed);
        Ok(Commit::Done)
    }
}

/// The pause before a projection whose log reading failed opens its consumer again.
const LOG_PAUSE: Duration = Duration::from_secs(1);

/// How many times a message the store refuses is written before it is dead-lettered.
const REFUSALS: u32 = 3;

/// The longest a batch waits to fill while the stream holds more.
const FILL_WAIT: Duration = Duration::from_millis(50);

fn seq(m: &Message) -> u64 {
    m.info().map(|i| i.stream_sequence).unwrap_or(0)
}

/// How many messages the consumer had yet to deliver after `m`.
fn pending(m: &Message) -> u64 {
    m.info().map(|i| i.pending).unwrap_or(0)
}

/// Empties the read model and projects every stream again from the start of the log, with
/// ephemeral consumers (the live projection's durable consumers are left alone); returns
/// once each stream is caught up with what it held when the rebuild started.
pub async fn rebuild(
    js: &JetStream,
    read_model: &ReadModel,
) -> Result<ProjectionStats, KnowledgeError> {
    read_model.reset().await?;
    let stats = ProjectionStats::default();
    let config = ProjectionConfig {
        durable_prefix: None,
        until_caught_up: true,
        ..ProjectionConfig::default()
    };
    project_with(
        js.clone(),
        read_model.clone(),
        None,
        config,
        stats.clone(),
        std::future::pending(),
    )
    .await?;
    Ok(stats)
}
