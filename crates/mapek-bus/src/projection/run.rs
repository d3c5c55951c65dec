//! The loop over one stream: [`run`].

use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures::{FutureExt as _, StreamExt as _};

use super::{Batch, Commit, Failed, Failure, REFUSALS, RunConfig, RunError, Stop, Store, seq};
use crate::JetStream;

/// The pause before a projection whose log reading failed opens its consumer again.
const LOG_PAUSE: Duration = Duration::from_secs(1);

/// The first pause after a store failed; each failure in a row doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest a batch waits to fill while the stream holds more.
const FILL_WAIT: Duration = Duration::from_millis(50);

/// Projects `stream` into `store` until `stop` is set, or, with
/// [`RunConfig::until_caught_up`], until the store has applied the last sequence the stream
/// held at start. Returns an error only for what the runner does not wait out (see
/// [`RunError`]).
pub async fn run<S: Store>(
    js: JetStream,
    stream: String,
    store: S,
    config: RunConfig,
    stop: Stop,
) -> Result<(), RunError<S::Error>> {
    Runner {
        js,
        stream,
        store,
        config,
        stop,
    }
    .run()
    .await
}

/// One stream's projection.
struct Runner<S> {
    js: JetStream,
    stream: String,
    store: S,
    config: RunConfig,
    stop: Stop,
}

/// How a store took a batch, or what kept it from taking it.
enum Written<E> {
    Commit(Commit),
    /// Refused as many times as allowed, with the store's last reason.
    Refused(E),
    /// Asked to stop before it was written.
    Stopped,
}

/// Where following a consumer ended.
enum Followed {
    /// Stopped, or caught up: the projection is over.
    Done,
    /// The consumer is to be opened again from the stored offset.
    Reopen,
}

/// What the runner's steps return: an error ends the projection.
type RunResult<T, E> = Result<T, RunError<E>>;

impl<S: Store> Runner<S> {
    async fn run(mut self) -> RunResult<(), S::Error> {
        let Some((stream, target)) = self.stream_and_end().await? else {
            return Ok(());
        };
        let mut redeliver_from = self.config.redeliver_from.take();
        while !self.stop.is_set() {
            let Some(stored) = self.offset().await? else {
                break;
            };
            if self.config.until_caught_up && stored >= target {
                break;
            }
            let start = redeliver_from.take().unwrap_or(stored + 1).max(1);
            match self.open(&stream, start).await {
                Ok(messages) => match self.follow(messages, target).await? {
                    Followed::Done => break,
                    Followed::Reopen => {}
                },
                Err(e) => self.log_failed(e).await?,
            }
        }
        Ok(())
    }

    /// Hands the consumer's messages to the store a batch at a time, acknowledging each
    /// batch after its commit.
    async fn follow(
        &mut self,
        mut messages: pull::Stream,
        target: u64,
    ) -> RunResult<Followed, S::Error> {
        loop {
            let taken = match self.take(&mut messages).await {
                Ok(Some(taken)) => taken,
                Ok(None) => return Ok(Followed::Done),
                Err(e) => {
                    self.log_failed(e).await?;
                    return Ok(Followed::Reopen);
                }
            };
            let last_seq = seq(taken.last().expect("one message at least"));
            match self.write(&taken).await? {
                None => return Ok(Followed::Done),
                Some(Commit::Moved) => return Ok(Followed::Reopen),
                Some(Commit::Done) => {}
            }
            if let Some(hook) = &self.config.crash_after_commit
                && hook(&self.stream, last_seq)
            {
                return Err(RunError::Crashed {
                    stream: self.stream.clone(),
                    seq: last_seq,
                });
            }
            self.ack(&taken).await;
            if self.config.until_caught_up && last_seq >= target {
                return Ok(Followed::Done);
            }
        }
    }

    /// The next batch: one message, then whatever else is there or comes within the
    /// linger, up to a batch. `None` if asked to stop; an error is the log's.
    async fn take(&self, messages: &mut pull::Stream) -> Result<Option<Vec<Message>>, String> {
        let first = tokio::select! {
            m = messages.next() => m,
            () = self.stop.wait() => return Ok(None),
        };
        let mut taken = match first {
            Some(Ok(m)) => vec![m],
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the consumer's messages ended".into()),
        };
        // While the stream holds more, wait a little for a full batch: a commit costs a
        // handful of round trips, so a backlog drains in big ones. Caught up, the batch is
        // written at once, or at the end of the linger.
        let now = tokio::time::Instant::now();
        let (fill_until, linger_until) = (now + FILL_WAIT, now + self.config.linger);
        while taken.len() < self.config.batch.max(1) {
            let next = match messages.next().now_or_never() {
                Some(next) => next,
                None => {
                    let until = if pending(taken.last().expect("one message")) > 0 {
                        fill_until.max(linger_until)
                    } else {
                        linger_until
                    };
                    if until <= tokio::time::Instant::now() {
                        break;
                    }
                    tokio::select! {
                        next = tokio::time::timeout_at(until, messages.next()) => match next {
                            Ok(next) => next,
                            Err(_) => break,
                        },
                        () = self.stop.wait() => break,
                    }
                }
            };
            // A failed read ends the batch; the next read tells whether it lasts.
            match next {
                Some(Ok(m)) => taken.push(m),
                _ => break,
            }
        }
        Ok(Some(taken))
    }

    /// One ack for the batch, on a durable consumer (it acknowledges cumulatively).
    async fn ack(&self, taken: &[Message]) {
        if self.config.durable.is_none() {
            return;
        }
        if let Err(e) = taken.last().expect("one message").ack().await {
            tracing::warn!(
                stream = self.stream.as_str(),
                "ack failed (harmless: the batch is stored): {e}"
            );
        }
    }

    /// Commits `taken`; a batch the store refuses is written again one message at a time
    /// ([`Runner::one_by_one`]). `None` if asked to stop meanwhile.
    async fn write(&mut self, taken: &[Message]) -> RunResult<Option<Commit>, S::Error> {
        let batch = Batch {
            messages: taken,
            dead_lettered: false,
        };
        match self.commit(batch, 1).await? {
            Written::Commit(commit) => Ok(Some(commit)),
            Written::Stopped => Ok(None),
            Written::Refused(e) => {
                tracing::warn!(
                    stream = self.stream.as_str(),
                    last_seq = batch.last_seq(),
                    "{} refused a batch ({e}); writing it one message at a time",
                    self.store.describe()
                );
                self.one_by_one(taken).await
            }
        }
    }

    /// Commits each message of `taken` on its own. One the store still refuses after
    /// [`REFUSALS`] tries is a poison message: the store dead-letters it, it is recorded as
    /// skipped, and the messages after it are written. `None` if asked to stop meanwhile.
    async fn one_by_one(&mut self, taken: &[Message]) -> RunResult<Option<Commit>, S::Error> {
        for message in taken {
            let messages = std::slice::from_ref(message);
            let mut batch = Batch {
                messages,
                dead_lettered: false,
            };
            let mut written = self.commit(batch, REFUSALS).await?;
            if let Written::Refused(e) = written {
                self.dead_letter(message, &e).await?;
                batch.dead_lettered = true;
                written = self.commit(batch, 1).await?;
            }
            match written {
                Written::Commit(Commit::Done) => {}
                Written::Commit(Commit::Moved) => return Ok(Some(Commit::Moved)),
                Written::Stopped => return Ok(None),
                Written::Refused(e) => {
                    let detail = format!("skipping {}: {e}", seq(message));
                    return Err(self.log_error(detail));
                }
            }
        }
        Ok(Some(Commit::Done))
    }

    async fn dead_letter(
        &mut self,
        message: &Message,
        reason: &S::Error,
    ) -> RunResult<(), S::Error> {
        match self.store.dead_letter(message, reason).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.log_error(format!("dead-lettering a poison message: {e}"))),
        }
    }

    /// Commits `batch`, trying again while the store does not answer. Refused once the
    /// store has refused the data itself `refusals` times.
    async fn commit(
        &mut self,
        batch: Batch<'_>,
        refusals: u32,
    ) -> RunResult<Written<S::Error>, S::Error> {
        let mut backoff = FIRST_BACKOFF;
        let mut refused = 0;
        loop {
            let (doing, e) = match self.store.apply(batch).await {
                Ok(commit) => return Ok(Written::Commit(commit)),
                Err(Failure::Refused(e)) => {
                    refused += 1;
                    if refused >= refusals {
                        return Ok(Written::Refused(e));
                    }
                    ("writing a message", e)
                }
                Err(Failure::Unavailable(e)) => ("writing a batch", e),
            };
            self.store_failed(doing, e, &mut backoff).await?;
            if self.stop.is_set() {
                return Ok(Written::Stopped);
            }
        }
    }

    /// The stored offset, tried again while the store does not answer; `None` if asked to
    /// stop meanwhile.
    async fn offset(&mut self) -> RunResult<Option<u64>, S::Error> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.store.offset().await {
                Ok(stored) => return Ok(Some(stored)),
                Err(e) => {
                    self.store_failed("reading its offset", e.into_inner(), &mut backoff)
                        .await?
                }
            }
            if self.stop.is_set() {
                return Ok(None);
            }
        }
    }

    /// Counts a store failure and pauses before the next try; a projection that is not
    /// patient stops with it instead.
    async fn store_failed(
        &mut self,
        doing: &str,
        e: S::Error,
        backoff: &mut Duration,
    ) -> RunResult<(), S::Error> {
        if !self.config.patient {
            return Err(RunError::Store(e));
        }
        self.store.count(Failed::Store);
        tracing::warn!(
            stream = self.stream.as_str(),
            "{} failed {doing}: {e}; trying again in {backoff:?}",
            self.store.describe()
        );
        self.stop.pause(*backoff).await;
        *backoff = (*backoff * 2).min(self.config.max_backoff);
        Ok(())
    }

    /// Counts a failure to read the log and pauses before the consumer is opened again; a
    /// projection that is not patient stops with it instead.
    async fn log_failed(&mut self, detail: String) -> RunResult<(), S::Error> {
        if !self.config.patient {
            return Err(self.log_error(detail));
        }
        self.store.count(Failed::Log);
        tracing::warn!(
            stream = self.stream.as_str(),
            "reading the log failed ({detail}); opening it again in 1 s"
        );
        self.stop.pause(LOG_PAUSE).await;
        Ok(())
    }

    fn log_error(&self, detail: String) -> RunError<S::Error> {
        RunError::Log {
            stream: self.stream.clone(),
            detail,
        }
    }

    /// The stream and the last sequence it holds now, waiting out a log that does not
    /// answer; an error if the stream does not exist, `None` if asked to stop meanwhile.
    async fn stream_and_end(&mut self) -> RunResult<Option<(Stream, u64)>, S::Error> {
        loop {
            let found = match self.js.get_stream(self.stream.as_str()).await {
                Err(e) if crate::streams::is_not_found(&e) => {
                    return Err(self.log_error(format!("{e}; run `mapek streams apply`")));
                }
                Err(e) => Err(e.to_string()),
                // The lookup brings the stream's state with it: no second request.
                Ok(stream) => {
                    let end = stream.cached_info().state.last_sequence;
                    Ok((stream, end))
                }
            };
            match found {
                Ok(found) => return Ok(Some(found)),
                Err(e) => self.log_failed(e).await?,
            }
            if self.stop.is_set() {
                return Ok(None);
            }
        }
    }

    /// Opens the projection's consumer on `stream` from sequence `start` (durable, taking
    /// over the one of that name, or ephemeral). An error is the log's (a leader election, a
    /// lost server), for the caller to wait out.
    async fn open(&self, stream: &Stream, start: u64) -> Result<pull::Stream, String> {
        let durable = self.config.durable.clone();
        if let Some(name) = &durable {
            // Taking the consumer over at the stored offset: whatever its ack floor says,
            // the store knows what has been applied.
            let _ = stream.delete_consumer(name).await;
        }
        let ack_policy = match durable {
            Some(_) => AckPolicy::All,
            None => AckPolicy::None,
        };
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: durable,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: 100_000,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot open its consumer: {e}"))?;
        tracing::debug!(
            stream = self.stream.as_str(),
            consumer = consumer.cached_info().name.as_str(),
            server = self.js.client().server_info().server_name.as_str(),
            "reading from sequence {start}"
        );
        consumer
            .stream()
            .max_messages_per_batch(self.config.batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| format!("cannot read its consumer: {e}"))
    }
}

/// How many messages the consumer had yet to deliver after `m`.
fn pending(m: &Message) -> u64 {
    m.info().map(|i| i.pending).unwrap_or(0)
}
