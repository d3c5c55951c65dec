//! Following a subject family, live or from a point in the log.
//!
//! A [`Subscriber`] is an ordered consumer: ephemeral, flow-controlled, recreated by the client
//! if it misses a message, so what it yields is in stream order with no gap. It never
//! acknowledges or dead-letters anything: a viewer must not change what workers see.
//!
//! Telemetry split over several streams ([`crate::layout`]) is followed through one ordered
//! consumer per stream that holds what the filter matches. What the streams held when the
//! subscriber started comes merged by stored time (then by stream name); after that, messages
//! come as they arrive. Each stream's (so each node's and each partition's) order is kept.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use async_nats::jetstream::consumer::DeliverPolicy;
use std::pin::Pin;
use std::sync::Arc;

use async_nats::jetstream::consumer::pull::{OrderedConfig, OrderedError};
use futures::{Stream, StreamExt};
use mapek_codec::{AvroEvent, CodecError};
use mapek_domain::{NodeId, Phase};
use time::OffsetDateTime;

use crate::{BusError, JetStream, headers, layout};

/// The subject families a user can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `mapek.monitor.>`: Telemetry.
    Telemetry,
    /// `mapek.analyze.>`: Symptom.
    Symptoms,
    /// `mapek.plan.>`: Decision.
    Decisions,
    /// `mapek.execute.>`: ActionResult.
    Actions,
    /// `mapek.knowledge.>`: Outcome.
    Outcomes,
    /// `mapek.shadow.>`: ShadowDecision, candidate policies' decisions.
    Shadow,
    /// `mapek.dlq.>`: Rejected.
    Rejected,
}

impl Family {
    /// Every family, in loop order.
    pub const ALL: [Family; 7] = [
        Family::Telemetry,
        Family::Symptoms,
        Family::Decisions,
        Family::Actions,
        Family::Outcomes,
        Family::Shadow,
        Family::Rejected,
    ];

    /// The phase that publishes it.
    pub fn phase(self) -> Phase {
        match self {
            Family::Telemetry => Phase::Monitor,
            Family::Symptoms => Phase::Analyze,
            Family::Decisions => Phase::Plan,
            Family::Actions => Phase::Execute,
            Family::Outcomes => Phase::Knowledge,
            Family::Shadow => Phase::Shadow,
            Family::Rejected => Phase::Dlq,
        }
    }

    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Telemetry => "telemetry",
            Family::Symptoms => "symptoms",
            Family::Decisions => "decisions",
            Family::Actions => "actions",
            Family::Outcomes => "outcomes",
            Family::Shadow => "shadow",
            Family::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown family {s:?}"))
    }
}

/// Where in the log to start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// Only what is published from now on.
    #[default]
    New,
    /// From the first message the stream still holds.
    All,
    /// From the first message stored at or after this time.
    Since(OffsetDateTime),
    /// From this stream sequence (of a phase stored in one stream).
    Sequence(u64),
}

/// What to follow.
#[derive(Clone, Debug, Default)]
pub struct SubscriberConfig {
    /// Only this node's events (for dead letters: those whose subject names it).
    pub node: Option<NodeId>,
    /// Where to start.
    pub start: StartAt,
}

impl SubscriberConfig {
    /// Everything the stream holds, from the oldest, for every node.
    pub fn all() -> Self {
        Self {
            node: None,
            start: StartAt::All,
        }
    }

    /// Everything the stream holds about `node`, from the oldest.
    pub fn node(node: NodeId) -> Self {
        Self {
            node: Some(node),
            start: StartAt::All,
        }
    }
}

/// One message as it was stored, and what it decoded to.
#[derive(Debug)]
pub struct Received<E> {
    /// The stream it is stored in (`MAPEK_MONITOR_1`).
    pub stream: Arc<str>,
    /// Its stream sequence.
    pub stream_seq: u64,
    /// The subject it was stored under (`mapek.monitor.3.n17`).
    pub subject: String,
    /// When the server stored it.
    pub stored: OffsetDateTime,
    /// How many messages its stream holds after it for this subscriber.
    pub pending: u64,
    /// The event, or why it does not decode.
    pub event: Result<E, CodecError>,
}

type Delivered = Result<async_nats::jetstream::Message, OrderedError>;

/// One stream's ordered consumer, and the message taken from it but not yet handed out.
struct Source {
    name: Arc<str>,
    messages: Pin<Box<dyn Stream<Item = Delivered> + Send>>,
    head: Option<Delivered>,
    /// It has delivered everything it held: what comes next is new.
    caught_up: bool,
    ended: bool,
}

impl Source {
    /// Where the head goes in the merge: errors first, then by stored time.
    fn head_key(&self) -> Option<OffsetDateTime> {
        match self.head.as_ref()? {
            Ok(m) => Some(m.info().map_or(OffsetDateTime::UNIX_EPOCH, |i| i.published)),
            Err(_) => Some(OffsetDateTime::UNIX_EPOCH),
        }
    }

    fn hand_out(&mut self) -> Option<(Arc<str>, Delivered)> {
        let message = self.head.take()?;
        self.caught_up = match &message {
            Ok(m) => m.info().is_ok_and(|i| i.pending == 0),
            Err(_) => self.caught_up,
        };
        Some((self.name.clone(), message))
    }
}

/// Follows one subject family in stream order.
pub struct Subscriber<E> {
    sources: Vec<Source>,
    pending_at_start: u64,
    node_filter: Option<NodeId>,
    _event: PhantomData<E>,
}

impl<E: AvroEvent> Subscriber<E> {
    /// Starts following `E`'s family (`Telemetry` → `mapek.monitor.>`).
    pub async fn open(js: &JetStream, config: SubscriberConfig) -> Result<Self, BusError> {
        // Dead letters are stored by phase, not by node: filter them here instead.
        let phase = E::PHASE;
        // A node's events are stored under its partition: one stream even where telemetry
        // is split, so a start sequence of that stream means something.
        let (filter, node_filter) = match (phase, config.node) {
            (Phase::Dlq, node) => (phase.stored_filter(None), node),
            (_, Some(node)) => {
                let partition = layout::partition_of_node(&node);
                (format!("mapek.{}.{partition}.{node}", phase.token()), None)
            }
            (_, None) => (phase.stored_filter(None), None),
        };
        let mut subscriber = Self::open_subject(js, filter, config.start).await?;
        subscriber.node_filter = node_filter;
        Ok(subscriber)
    }

    /// Follows `E`'s stream through any stored-subject filter (`mapek.monitor.3.>` for one
    /// partition), from `start`. Telemetry split over several streams is read from the one
    /// that holds the partition the filter names, or from all of them.
    pub async fn open_subject(
        js: &JetStream,
        filter_subject: String,
        start: StartAt,
    ) -> Result<Self, BusError> {
        let phase = E::PHASE;
        let mut streams = layout::streams_of(js, phase).await?;
        if let Some(p) = layout::partition_of(&filter_subject) {
            streams.retain(|s| s.holds(p));
        }
        if let (StartAt::Sequence(_), [_, _, ..]) = (start, streams.as_slice()) {
            return Err(BusError::Consumer {
                stream: phase.stream().to_owned(),
                detail: format!(
                    "a sequence names a place in one stream, and {phase} is split over {} \
                     streams: start from a time instead",
                    streams.len()
                ),
            });
        }
        let mut sources = Vec::with_capacity(streams.len());
        for stored in streams {
            sources.push(open_ordered(js, &stored.name, &filter_subject, start).await?);
        }
        Ok(Self {
            pending_at_start: sources.iter().map(|s| s.0).sum(),
            sources: sources.into_iter().map(|s| s.1).collect(),
            node_filter: None,
            _event: PhantomData,
        })
    }

    /// How many stored messages matched when the subscriber started: with
    /// [`StartAt::New`] always 0.
    pub fn pending_at_start(&self) -> u64 {
        self.pending_at_start
    }

    /// The next message; `None` only if the connection closed for good.
    pub async fn next(&mut self) -> Option<Result<Received<E>, BusError>> {
        loop {
            let received = self.next_unfiltered().await;
            if let (Some(node), Some(Ok(r))) = (&self.node_filter, &received)
                && r.event.as_ref().is_ok_and(|e| e.node() != node)
            {
                continue;
            }
            return received;
        }
    }

    /// The next message of the merge: the earliest stored of what the streams that are not
    /// caught up hold, else whichever stream delivers first.
    async fn next_message(&mut self) -> Option<(Arc<str>, Delivered)> {
        if let [only] = self.sources.as_mut_slice() {
            let message = only.messages.next().await?;
            return Some((only.name.clone(), message));
        }
        loop {
            for source in &mut self.sources {
                if source.head.is_none() && !source.caught_up && !source.ended {
                    match source.messages.next().await {
                        Some(message) => source.head = Some(message),
                        None => source.ended = true,
                    }
                }
            }
            let earliest = (0..self.sources.len())
                .filter_map(|i| self.sources[i].head_key().map(|k| (k, i)))
                .min();
            if let Some((_, i)) = earliest {
                return self.sources[i].hand_out();
            }
            let live: Vec<usize> = (0..self.sources.len())
                .filter(|i| !self.sources[*i].ended)
                .collect();
            if live.is_empty() {
                return None;
            }
            let (message, at, _) = futures::future::select_all(
                self.sources
                    .iter_mut()
                    .filter(|s| !s.ended)
                    .map(|s| s.messages.next()),
            )
            .await;
            let source = &mut self.sources[live[at]];
            match message {
                Some(message) => {
                    source.head = Some(message);
                    return source.hand_out();
                }
                None => source.ended = true,
            }
        }
    }

    async fn next_unfiltered(&mut self) -> Option<Result<Received<E>, BusError>> {
        let (stream, message) = self.next_message().await?;
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(BusError::Consumer {
                    stream: stream.to_string(),
                    detail: e.to_string(),
                }));
            }
        };
        let (stream_seq, stored, pending) = match message.info() {
            Ok(i) => (i.stream_sequence, i.published, i.pending),
            Err(_) => (0, OffsetDateTime::UNIX_EPOCH, 0),
        };
        let event = headers::decode_body::<E>(message.headers.as_ref(), &message.payload);
        Some(Ok(Received {
            stream,
            stream_seq,
            subject: message.subject.to_string(),
            stored,
            pending,
            event,
        }))
    }
}

/// An ordered consumer on `name` through `filter_subject` from `start`, and how many messages
/// it had to deliver when it began.
async fn open_ordered(
    js: &JetStream,
    name: &str,
    filter_subject: &str,
    start: StartAt,
) -> Result<(u64, Source), BusError> {
    let failed = |detail: String| BusError::Consumer {
        stream: name.to_owned(),
        detail,
    };
    let stream = js.get_stream(name).await.map_err(|e| {
        failed(format!(
            "{e}; has `mapek streams apply` been run on this server?"
        ))
    })?;
    let deliver_policy = match start {
        StartAt::New => DeliverPolicy::New,
        StartAt::All => DeliverPolicy::All,
        StartAt::Since(start_time) => DeliverPolicy::ByStartTime { start_time },
        StartAt::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
    };
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter_subject.to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
    let pending = consumer
        .info()
        .await
        .map(|i| i.num_pending)
        .map_err(|e| failed(e.to_string()))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let source = Source {
        name: Arc::from(name),
        messages: Box::pin(messages),
        head: None,
        caught_up: pending == 0,
        ended: false,
    };
    Ok((pending, source))
}
