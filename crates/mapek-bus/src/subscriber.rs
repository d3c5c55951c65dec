//! Following a subject family, live or from a point in the log.
//!
//! A [`Subscriber`] reads a stream by batched direct gets ([`crate::direct`]): in stream order
//! with no gap, with no consumer on the server and nothing acknowledged, so a viewer changes
//! nothing workers see and needs no more than a read-only identity.
//! [`Subscriber::next_stored`] reads what the streams held when it opened;
//! [`Subscriber::next`] follows on, waiting for what is stored next.
//!
//! Telemetry split over several streams ([`crate::layout`]) is followed through one reader
//! per stream that holds what the filter matches, merged by stored time (then by stream
//! name). Each stream's (so each node's and each partition's) order is kept.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use std::sync::Arc;

use mapek_codec::{AvroEvent, CodecError};
use mapek_domain::{NodeId, Phase};
use time::OffsetDateTime;

use tokio::time::Instant;

use crate::direct::{IDLE_POLL, Reader, Stored};
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

/// One stream's reader, and the message read from it but not yet handed out.
struct Source {
    reader: Reader,
    /// The stream's last sequence when the subscriber opened.
    last_at_open: u64,
    head: Option<Stored>,
    /// Everything stored up to `last_at_open` has been read into `head` or handed out.
    read_through: bool,
    /// Nothing new was stored when last asked: ask again from then on.
    quiet_until: Option<Instant>,
}

impl Source {
    /// Where the head goes in the merge: by stored time, then by stream name.
    fn head_key(&self) -> Option<(OffsetDateTime, &str)> {
        let head = self.head.as_ref()?;
        Some((head.stored, &head.stream))
    }

    /// Reads the next message stored by the time the subscriber opened into the head.
    async fn fill_stored(&mut self) -> Result<(), BusError> {
        if self.head.is_none() && !self.read_through {
            self.head = self.reader.next_through(self.last_at_open).await?;
            self.read_through = self.head.is_none();
        }
        Ok(())
    }

    /// Reads the next message into the head unless the stream had nothing new a moment ago.
    async fn fill_live(&mut self, now: Instant) -> Result<(), BusError> {
        if self.head.is_some() || self.quiet_until.is_some_and(|t| t > now) {
            return Ok(());
        }
        self.head = self.reader.next_stored().await?;
        self.quiet_until = match self.head {
            Some(_) => None,
            None => Some(now + self.reader.idle_step()),
        };
        Ok(())
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
        match (phase, config.node) {
            (Phase::Dlq, node) => {
                let all = Self::open_subject(js, phase.stored_filter(None), config.start);
                let mut subscriber = all.await?;
                subscriber.node_filter = node;
                Ok(subscriber)
            }
            (_, Some(node)) => Self::open_node(js, &node, config.start).await,
            (_, None) => Self::open_subject(js, phase.stored_filter(None), config.start).await,
        }
    }

    /// Follows `node`'s events of `E`'s family. They are in one stream even where telemetry
    /// is split, so a start sequence of that stream means something: the one holding the
    /// node's partition, where the partitions it had before the count grew are too (ADR
    /// 0024). Read under any partition, so that its history from before is read with it.
    async fn open_node(js: &JetStream, node: &NodeId, start: StartAt) -> Result<Self, BusError> {
        let phase = E::PHASE;
        let mut streams = layout::streams_of(js, phase).await?;
        let partition = layout::partition_of_node(node, layout::partition_count(&streams));
        streams.retain(|s| s.holds(partition));
        Self::open_in(js, streams, phase.stored_filter(Some(node)), start).await
    }

    /// Follows `E`'s stream through any stored-subject filter (`mapek.monitor.3.>` for one
    /// partition), from `start`. Telemetry split over several streams is read from the one
    /// that holds the partition the filter names, or from all of them.
    pub async fn open_subject(
        js: &JetStream,
        filter_subject: String,
        start: StartAt,
    ) -> Result<Self, BusError> {
        let mut streams = layout::streams_of(js, E::PHASE).await?;
        if let Some(p) = layout::partition_of(&filter_subject) {
            streams.retain(|s| s.holds(p));
        }
        Self::open_in(js, streams, filter_subject, start).await
    }

    /// Follows `filter_subject` in `streams`, from `start`.
    async fn open_in(
        js: &JetStream,
        streams: Vec<layout::StoredIn>,
        filter_subject: String,
        start: StartAt,
    ) -> Result<Self, BusError> {
        let phase = E::PHASE;
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
            sources.push(open_source(js, &stored.name, &filter_subject, start).await?);
        }
        Ok(Self {
            pending_at_start: sources
                .iter()
                .filter_map(|s| s.head.as_ref())
                .map(|head| head.pending + 1)
                .sum(),
            sources,
            node_filter: None,
            _event: PhantomData,
        })
    }

    /// How many stored messages matched when the subscriber started: with
    /// [`StartAt::New`] always 0.
    pub fn pending_at_start(&self) -> u64 {
        self.pending_at_start
    }

    /// The next message, waiting for it to be stored; `None` never (the type is kept for
    /// the callers that stop at the end of a stream).
    pub async fn next(&mut self) -> Option<Result<Received<E>, BusError>> {
        loop {
            let received = match self.next_live().await {
                Ok(stored) => self.received(stored),
                Err(e) => return Some(Err(e)),
            };
            if self.wanted(&received) {
                return Some(Ok(received));
            }
        }
    }

    /// The next message the streams held when the subscriber opened; `None` once all of it
    /// has been read. Where a replica that answers lags behind its leader, the end is
    /// confirmed with the leader, so nothing stored before the subscriber opened is missed.
    pub async fn next_stored(&mut self) -> Option<Result<Received<E>, BusError>> {
        loop {
            let received = match self.next_stored_message().await {
                Ok(stored) => self.received(stored?),
                Err(e) => return Some(Err(e)),
            };
            if self.wanted(&received) {
                return Some(Ok(received));
            }
        }
    }

    /// Forgets that the streams had nothing new when last asked, so the next read asks them
    /// at once: for a caller that knows more is stored (a stream's last sequence moved).
    pub fn ask_again_now(&mut self) {
        for source in &mut self.sources {
            source.quiet_until = None;
            source.reader.reset_idle();
        }
    }

    /// Whether a message passes the node filter (dead letters are filtered here).
    fn wanted(&self, received: &Received<E>) -> bool {
        match (&self.node_filter, &received.event) {
            (Some(node), Ok(event)) => event.node() == node,
            _ => true,
        }
    }

    /// The earliest stored head, taken out.
    fn take_earliest(&mut self) -> Option<Stored> {
        let (_, i) = (0..self.sources.len())
            .filter_map(|i| self.sources[i].head_key().map(|k| (k, i)))
            .min()?;
        self.sources[i].head.take()
    }

    async fn next_stored_message(&mut self) -> Result<Option<Stored>, BusError> {
        for source in &mut self.sources {
            source.fill_stored().await?;
        }
        Ok(self.take_earliest())
    }

    /// The next message of the merge: the earliest stored of what the streams hold now,
    /// asking again the streams that had nothing new after a short wait.
    async fn next_live(&mut self) -> Result<Stored, BusError> {
        loop {
            let now = Instant::now();
            for source in &mut self.sources {
                source.fill_live(now).await?;
            }
            if let Some(stored) = self.take_earliest() {
                return Ok(stored);
            }
            let wake = self.sources.iter().filter_map(|s| s.quiet_until).min();
            tokio::time::sleep_until(wake.unwrap_or(now + IDLE_POLL)).await;
        }
    }

    fn received(&self, stored: Stored) -> Received<E> {
        let event = headers::decode_body::<E>(stored.headers.as_ref(), &stored.payload);
        Received {
            stream: stored.stream,
            stream_seq: stored.seq,
            subject: stored.subject,
            stored: stored.stored,
            pending: stored.pending,
            event,
        }
    }
}

/// A reader of `name` through `filter_subject` from `start`, with the first message it had to
/// deliver when it began read ahead.
async fn open_source(
    js: &JetStream,
    name: &str,
    filter_subject: &str,
    start: StartAt,
) -> Result<Source, BusError> {
    let reader = Reader::open(js, name, filter_subject, start).await?;
    let last_at_open = reader.last_at_open();
    let mut source = Source {
        reader,
        last_at_open,
        head: None,
        read_through: start == StartAt::New,
        quiet_until: None,
    };
    source.fill_stored().await?;
    Ok(source)
}
