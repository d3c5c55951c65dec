//! Durable consumers for workers.
//!
//! An [`Inbox`] is a durable pull consumer on one phase's stream (or one partition of it, on
//! the stream that holds the partition: see [`crate::layout`]). It
//! hands a worker batches of decoded events; a message it cannot decode or validate is stored
//! in the dead-letter stream with the reason and then terminated, so it is neither retried
//! forever nor lost, and the good messages around it flow on. The worker acknowledges each
//! delivery once its effects are stored.
//!
//! Acknowledgements are cumulative, and a worker folds its input in order, so it must never
//! go on past a delivery it did not get: one lost on the way (the client's server went away
//! with it, or a new consumer leader counts it as delivered) would come again only after the
//! ack wait, behind newer input, or never, once a later ack covered it. The consumer numbers
//! its deliveries 1, 2, 3…; a number skipped is such a loss, and the inbox then fails
//! instead of handing out what came after. Whoever opens the consumer again starts right
//! after its ack floor, with every message after it delivered again in stream order.

use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use futures::{FutureExt, StreamExt};
use mapek_codec::AvroEvent;
use mapek_domain::Phase;

use crate::{BusError, DeadLetters, JetStream, headers, layout};

/// Which durable consumer to read.
#[derive(Clone, Debug)]
pub struct InboxConfig {
    /// The durable consumer's name; workers sharing a name share the work.
    pub durable: String,
    /// A stored-subject filter (`mapek.monitor.3.>` for one partition); all of the phase if
    /// `None`.
    pub filter: Option<String>,
    /// The most messages fetched at once.
    pub batch: usize,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
}

impl InboxConfig {
    /// A config for the durable consumer `durable`, with a batch of 256 and a 10 s ack wait
    /// (how long a message taken by a worker that died waits before it is delivered again).
    pub fn new(durable: impl Into<String>) -> Self {
        Self {
            durable: durable.into(),
            filter: None,
            batch: 256,
            ack_wait: Duration::from_secs(10),
        }
    }
}

/// A decoded event and the handle to acknowledge it.
pub struct Delivery<E> {
    /// The event.
    pub event: E,
    message: Message,
}

impl<E> Delivery<E> {
    /// Its stream sequence, read from the message's reply subject when asked (0 if it has
    /// none).
    pub fn stream_seq(&self) -> u64 {
        self.message.info().map_or(0, |i| i.stream_sequence)
    }

    /// Acknowledges it and every delivery before it (the consumer acknowledges cumulatively,
    /// as a worker handles its input in order): none of them will be delivered again.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.message.ack().await.map_err(|e| BusError::Consumer {
            stream: String::new(),
            detail: format!("ack failed: {e}"),
        })
    }

    /// Asks for it again after `delay` (a store was down, say).
    pub async fn retry_after(&self, delay: Duration) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BusError::Consumer {
                stream: String::new(),
                detail: format!("nak failed: {e}"),
            })
    }

    /// The raw message, for its headers.
    pub fn message(&self) -> &Message {
        &self.message
    }
}

/// A durable consumer of one phase that yields decoded events and dead-letters the rest.
pub struct Inbox<E> {
    /// The ack floor when this inbox took the consumer over.
    acked_through: u64,
    /// The consumer sequence of the last message taken: the next should be one more.
    delivered: u64,
    messages: pull::Stream,
    dead_letters: DeadLetters,
    phase: Phase,
    stream: String,
    batch: usize,
    rejected: u64,
    _event: PhantomData<E>,
}

impl<E: AvroEvent> Inbox<E> {
    /// Opens (or creates) the durable consumer of `config` on `E`'s stream: the one that
    /// holds the partition its filter names, when the phase is split over several.
    pub async fn open(js: &JetStream, config: InboxConfig) -> Result<Self, BusError> {
        let phase = E::PHASE;
        let partition = config.filter.as_deref().and_then(layout::partition_of);
        let stream_name = layout::stream_for(js, phase, partition).await?;
        let failed = |detail: String| BusError::Consumer {
            stream: stream_name.clone(),
            detail,
        };
        let stream = js.get_stream(&stream_name).await.map_err(|e| {
            if crate::streams::is_not_found(&e) {
                failed(format!("{e}; run `mapek streams apply`"))
            } else {
                failed(format!("cannot read the stream (electing a leader?): {e}"))
            }
        })?;
        // Whoever opens the inbox takes it over: messages the previous reader took but never
        // acknowledged (it died, or gave the partition away) are delivered again, in stream
        // order, before anything newer. So the durable consumer is recreated to start right
        // after its ack floor; the reader rebuilds its state from the log up to that floor.
        let acked_through = match stream.consumer_info(&config.durable).await {
            Ok(info) => {
                let floor = info.ack_floor.stream_sequence;
                stream
                    .delete_consumer(&config.durable)
                    .await
                    .map_err(|e| failed(format!("cannot take over {}: {e}", config.durable)))?;
                floor
            }
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => 0,
            // Not knowing the floor is not a floor of 0: the reader would start from an empty
            // state on a consumer that goes on where it was. The caller retries.
            Err(e) => {
                return Err(failed(format!(
                    "cannot read {} (electing a leader?): {e}",
                    config.durable
                )));
            }
        };
        let deliver_policy = if acked_through == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: acked_through + 1,
            }
        };
        // Strict: a consumer that is still there (its deletion did not reach the server) is
        // an error to retry, never reused from where it was.
        let consumer = stream
            .create_consumer_strict(pull::Config {
                durable_name: Some(config.durable.clone()),
                filter_subject: config.filter.clone().unwrap_or_default(),
                deliver_policy,
                // Cumulative acks: one per batch instead of one per message.
                ack_policy: AckPolicy::All,
                ack_wait: config.ack_wait,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(e.to_string()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(config.batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self {
            acked_through,
            delivered: 0,
            messages,
            dead_letters: DeadLetters::new(js.clone()),
            phase,
            stream: stream_name,
            batch: config.batch.max(1),
            rejected: 0,
            _event: PhantomData,
        })
    }

    /// Fetches up to a batch of messages, waiting at most `max_wait` for the first. Returns
    /// the good ones decoded; the bad ones are already dead-lettered and terminated.
    pub async fn next_batch(&mut self, max_wait: Duration) -> Result<Vec<Delivery<E>>, BusError> {
        // Wait for the first message, then take whatever else has already arrived, up to a
        // batch: a quiet stream costs one open pull request, a busy one is read in batches,
        // and no message waits for a batch to fill.
        let mut good = Vec::new();
        let first = match tokio::time::timeout(max_wait, self.messages.next()).await {
            Err(_) => return Ok(good),
            Ok(None) => return Err(self.failed("the consumer's message stream ended".into())),
            Ok(Some(m)) => m,
        };
        self.take(first, &mut good).await?;
        let mut taken = 1;
        while taken < self.batch {
            match self.messages.next().now_or_never() {
                Some(Some(m)) => self.take(m, &mut good).await?,
                _ => break,
            }
            taken += 1;
        }
        Ok(good)
    }

    fn failed(&self, detail: String) -> BusError {
        BusError::Consumer {
            stream: self.stream.clone(),
            detail,
        }
    }

    /// Decodes one message into `good`, or dead-letters it.
    async fn take(
        &mut self,
        message: Result<Message, pull::MessagesError>,
        good: &mut Vec<Delivery<E>>,
    ) -> Result<(), BusError> {
        let message = message.map_err(|e| self.failed(e.to_string()))?;
        if let Ok(info) = message.info() {
            let expected = self.delivered + 1;
            if info.consumer_sequence > expected {
                let lost = match info.consumer_sequence - 1 {
                    last if last == expected => format!("delivery {expected}"),
                    last => format!("deliveries {expected} to {last}"),
                };
                return Err(self.failed(format!(
                    "{lost} never arrived (a server or a consumer leader was lost); reading on \
                     would step past it: the consumer must be opened again, from its ack floor"
                )));
            }
            // Lower than expected: a new consumer leader delivers again what the last one
            // had delivered (a stage skips what it already stepped).
            self.delivered = info.consumer_sequence;
        }
        match headers::decode_body::<E>(message.headers.as_ref(), &message.payload) {
            Ok(event) => good.push(Delivery { event, message }),
            Err(e) => {
                self.dead_letters
                    .reject(self.phase, &message, e.to_string())
                    .await?;
                message
                    .ack_with(AckKind::Term)
                    .await
                    .map_err(|e| self.failed(format!("terminating a dead letter: {e}")))?;
                self.rejected += 1;
            }
        }
        Ok(())
    }

    /// The stream sequence up to which every message has been acknowledged: where a worker
    /// that rebuilds its state by replaying the stream must stop replaying.
    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// Stops reading: messages already delivered to this inbox but not handed out are given
    /// back at once (not after the ack wait), so whoever takes over gets them without delay.
    pub async fn close(mut self) {
        while let Some(Some(Ok(message))) = self.messages.next().now_or_never() {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// Like [`Inbox::close`], giving back as well `taken`, deliveries handed out and not
    /// handled (a batch held back while its reader waited): whoever takes over gets them at
    /// once, not after the ack wait.
    pub async fn close_giving_back(self, taken: Vec<Delivery<E>>) {
        for delivery in taken {
            let _ = delivery.retry_after(Duration::ZERO).await;
        }
        self.close().await;
    }

    /// The stream it reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// How many messages this inbox has dead-lettered.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}
