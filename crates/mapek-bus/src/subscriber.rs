//! Following a subject family, live or from a point in the log.
//!
//! A [`Subscriber`] is an ordered consumer: ephemeral, flow-controlled, recreated by the client
//! if it misses a message, so what it yields is in stream order with no gap. It never
//! acknowledges or dead-letters anything: a viewer must not change what workers see.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use futures::StreamExt;
use mapek_codec::{AvroEvent, CodecError};
use mapek_domain::{NodeId, Phase};
use time::OffsetDateTime;

use crate::{BusError, JetStream, headers};

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
    /// `mapek.dlq.>`: Rejected.
    Rejected,
}

impl Family {
    /// Every family, in loop order.
    pub const ALL: [Family; 6] = [
        Family::Telemetry,
        Family::Symptoms,
        Family::Decisions,
        Family::Actions,
        Family::Outcomes,
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
    /// From this stream sequence.
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
    /// Its stream sequence.
    pub stream_seq: u64,
    /// The subject it was stored under (`mapek.monitor.3.n17`).
    pub subject: String,
    /// When the server stored it.
    pub stored: OffsetDateTime,
    /// How many messages the stream holds after it for this subscriber.
    pub pending: u64,
    /// The event, or why it does not decode.
    pub event: Result<E, CodecError>,
}

/// Follows one subject family in stream order.
pub struct Subscriber<E> {
    messages: Ordered,
    pending_at_start: u64,
    node_filter: Option<NodeId>,
    _event: PhantomData<E>,
}

impl<E: AvroEvent> Subscriber<E> {
    /// Starts following `E`'s family (`Telemetry` → `mapek.monitor.>`).
    pub async fn open(js: &JetStream, config: SubscriberConfig) -> Result<Self, BusError> {
        // Dead letters are stored by phase, not by node: filter them here instead.
        let phase = E::PHASE;
        let (filter, node_filter) = match phase {
            Phase::Dlq => (phase.stored_filter(None), config.node),
            _ => (phase.stored_filter(config.node.as_ref()), None),
        };
        let mut subscriber = Self::open_subject(js, filter, config.start).await?;
        subscriber.node_filter = node_filter;
        Ok(subscriber)
    }

    /// Follows `E`'s stream through any stored-subject filter (`mapek.monitor.3.>` for one
    /// partition), from `start`.
    pub async fn open_subject(
        js: &JetStream,
        filter_subject: String,
        start: StartAt,
    ) -> Result<Self, BusError> {
        let phase = E::PHASE;
        let failed = |detail: String| BusError::Consumer {
            stream: phase.stream().to_owned(),
            detail,
        };
        let stream = js.get_stream(phase.stream()).await.map_err(|e| {
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
                filter_subject,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(e.to_string()))?;
        let pending_at_start = consumer
            .info()
            .await
            .map(|i| i.num_pending)
            .map_err(|e| failed(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self {
            messages,
            pending_at_start,
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

    async fn next_unfiltered(&mut self) -> Option<Result<Received<E>, BusError>> {
        let message = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(BusError::Consumer {
                    stream: E::PHASE.stream().to_owned(),
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
            stream_seq,
            subject: message.subject.to_string(),
            stored,
            pending,
            event,
        }))
    }
}
