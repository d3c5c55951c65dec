//! Pipelined publishing.
//!
//! A [`Publisher`] sends each event at once and keeps its ack future in a bounded window; only
//! when the window is full does it wait, for the oldest ack. So a long run never awaits one
//! round trip per event, and never holds more than `window` unacknowledged events in memory.
//! Every event carries its id as `Nats-Msg-Id`: a retried run stores nothing twice.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{
    GetStreamByNameErrorKind, PublishAckFuture, PublishError, PublishErrorKind,
};
use bytes::Bytes;
use mapek_codec::{AvroEvent, KnownSchema, Registry, encode};

use crate::connect::MAX_ACKS_IN_FLIGHT;
use crate::{BusError, JetStream, headers};

/// How many acks a publisher lets wait by default.
pub const DEFAULT_WINDOW: usize = 1024;
/// How many failures a report keeps by id; the count covers all of them.
const KEPT_FAILURES: usize = 100;

/// The longest an event waits for its ack, counted from when it was sent (the client's own
/// JetStream timeout). Counted from the send, not from when the ack is awaited: acks are
/// awaited one after another, and during an election none may come, so a wait counted from
/// the await would cost this much per event in flight, not once.
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// What a run of publishes came to.
#[derive(Clone, Debug, Default)]
pub struct PublishReport {
    /// Events sent.
    pub sent: u64,
    /// Events the stream stored (acknowledged, not as duplicates).
    pub acked: u64,
    /// Events the stream acknowledged as duplicates of one already stored (same id).
    pub duplicates: u64,
    /// Events sent but never acknowledged.
    pub failed: u64,
    /// The first failures: the event id and why.
    pub failures: Vec<(String, String)>,
    /// From the first publish to the last ack.
    pub elapsed: Duration,
}

impl PublishReport {
    /// Events acknowledged per second, duplicates included.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.acked + self.duplicates) as f64 / secs
        } else {
            0.0
        }
    }

    /// Whether every event sent was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.failed == 0 && self.acked + self.duplicates == self.sent
    }
}

/// The family of a subject: `mapek.monitor.n1` → `mapek.monitor.>`.
fn family_of(subject: &str) -> String {
    let mut tokens = subject.splitn(3, '.');
    match (tokens.next(), tokens.next()) {
        (Some(a), Some(b)) => format!("{a}.{b}.>"),
        _ => subject.to_owned(),
    }
}

/// An event sent and its ack to come.
struct InFlight {
    id: Box<str>,
    subject: String,
    /// When the ack is given up on: [`ACK_WAIT`] after the send.
    deadline: tokio::time::Instant,
    ack: PublishAckFuture,
}

/// Publishes events to their phase's subject with a bounded window of acks in flight.
pub struct Publisher {
    js: JetStream,
    window: usize,
    /// Each ack awaited: the event id and subject, for the report.
    in_flight: VecDeque<InFlight>,
    report: PublishReport,
    started: Option<Instant>,
    /// Why the last event no stream answered for was not stored, and when that was asked:
    /// reused for a second, so an election costs one question to the server, not one per
    /// event.
    unanswered: Option<(Instant, String)>,
}

impl Publisher {
    /// A publisher with the default window of [`DEFAULT_WINDOW`] acks.
    pub fn new(js: JetStream) -> Self {
        Self::with_window(js, DEFAULT_WINDOW)
    }

    /// A publisher that lets at most `window` acks wait (1 to 16 384).
    pub fn with_window(js: JetStream, window: usize) -> Self {
        let window = window.clamp(1, MAX_ACKS_IN_FLIGHT);
        Self {
            js,
            window,
            in_flight: VecDeque::with_capacity(window),
            report: PublishReport::default(),
            started: None,
            unanswered: None,
        }
    }

    /// Checks, encodes and sends `event` to `mapek.<phase>.<node>`.
    ///
    /// An event that breaks a rule is refused here and nothing is sent. A send the client
    /// cannot make (connection gone) is an error too. An ack that fails later is counted in
    /// the report that [`Publisher::finish`] returns.
    pub async fn publish<E: AvroEvent>(&mut self, event: &E) -> Result<(), BusError> {
        self.publish_caused_by(event, None).await
    }

    /// Like [`Publisher::publish`], for an event caused by a message whose headers were
    /// `cause`: the event carries the W3C trace context on (a child `traceparent`, the same
    /// `tracestate`; see [`headers::child_traceparent`]). With no cause, the event starts
    /// its incident's trace.
    pub async fn publish_caused_by<E: AvroEvent>(
        &mut self,
        event: &E,
        cause: Option<&HeaderMap>,
    ) -> Result<(), BusError> {
        self.publish_traced(event, cause, SystemTime::now()).await
    }

    /// Like [`Publisher::publish_caused_by`], for a phase that took `cause` up at `started`:
    /// the span it records ([`crate::trace::record_span`]) runs from then to now.
    pub async fn publish_traced<E: AvroEvent>(
        &mut self,
        event: &E,
        cause: Option<&HeaderMap>,
        started: SystemTime,
    ) -> Result<(), BusError> {
        let payload = encode(event)?;
        let label = Registry::global()
            .latest(E::SCHEMA)
            .map(KnownSchema::label)
            .unwrap_or_default();
        let mut headers = headers::for_event(event, label);
        // Telemetry starts no trace of its own; everything after it, or caused, is traced.
        let traceparent = (E::PHASE != mapek_domain::Phase::Monitor || cause.is_some())
            .then(|| headers::child_traceparent(event, cause));
        if let Some(traceparent) = &traceparent {
            headers.insert(headers::name!(headers::TRACEPARENT), traceparent.as_str());
            let tracestate = headers::name!(headers::TRACESTATE);
            if let Some(state) = cause.and_then(|h| h.get(tracestate.clone())) {
                headers.insert(tracestate, state.as_str());
            }
        }
        let subject = E::PHASE.subject(event.node());
        self.publish_raw(subject, headers, payload.into(), event.event_id())
            .await?;
        if let Some(traceparent) = &traceparent {
            crate::trace::record_span(event, traceparent, cause, started);
        }
        Ok(())
    }

    /// Sends an already encoded message. `event_id` is only for the report; the dedup key is
    /// the `Nats-Msg-Id` in `headers`.
    pub async fn publish_raw(
        &mut self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        event_id: &str,
    ) -> Result<(), BusError> {
        self.started.get_or_insert_with(Instant::now);
        if self.in_flight.len() >= self.window {
            self.settle_oldest().await;
        }
        let ack = match self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
        {
            Ok(ack) => ack,
            Err(e) => {
                return Err(BusError::Publish {
                    subject,
                    detail: e.to_string(),
                });
            }
        };
        self.report.sent += 1;
        self.in_flight.push_back(InFlight {
            id: event_id.into(),
            subject,
            deadline: tokio::time::Instant::now() + ACK_WAIT,
            ack,
        });
        Ok(())
    }

    /// Waits for every ack still in flight and reports what the run came to.
    pub async fn finish(mut self) -> PublishReport {
        self.flush().await;
        let mut report = std::mem::take(&mut self.report);
        report.elapsed = self.started.map(|s| s.elapsed()).unwrap_or_default();
        report
    }

    /// Waits for every ack in flight, keeping the publisher for more.
    pub async fn flush(&mut self) {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await;
        }
    }

    /// Waits for every ack in flight, as [`Publisher::flush`] does, and fails if any event
    /// this publisher sent was not stored: the inputs that caused them must then not be
    /// acknowledged, so that they are delivered again. `family` names what was published
    /// (`mapek.analyze.>`), for the error, which also gives the first failure's reason.
    pub async fn flush_stored(&mut self, family: &str) -> Result<(), BusError> {
        self.flush().await;
        let failed = self.report.failed;
        if failed == 0 {
            return Ok(());
        }
        let first = self
            .report
            .failures
            .first()
            .map(|(id, why)| format!(" (the first, {id}: {why})"))
            .unwrap_or_default();
        Err(BusError::Publish {
            subject: family.to_owned(),
            detail: format!(
                "{failed} events were not stored{first}; what caused them will be delivered again"
            ),
        })
    }

    /// The report so far (acks still in flight are not in it yet).
    pub fn report(&self) -> &PublishReport {
        &self.report
    }

    async fn settle_oldest(&mut self) {
        let Some(InFlight {
            id,
            subject,
            deadline,
            ack,
        }) = self.in_flight.pop_front()
        else {
            return;
        };
        // An ack already here is taken even past the deadline: the future is polled first.
        let acked = tokio::time::timeout_at(deadline, ack.into_future())
            .await
            .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)));
        match acked {
            Ok(ack) if ack.duplicate => self.report.duplicates += 1,
            Ok(_) => self.report.acked += 1,
            Err(e) => {
                self.report.failed += 1;
                if self.report.failures.len() < KEPT_FAILURES {
                    let why = match e.kind() {
                        // The server answers "no responders" both when no stream stores the
                        // subject and when the stream that does has no leader to answer.
                        PublishErrorKind::StreamNotFound => self.why_unanswered(&subject).await,
                        PublishErrorKind::TimedOut => "no ack before the timeout (a leader \
                            election, or the client reconnecting to another server)"
                            .to_owned(),
                        _ => e.to_string(),
                    };
                    self.report.failures.push((id.into(), why));
                }
            }
        }
    }

    /// Why nothing answered a publish to `subject`: asks the server which stream stores its
    /// family (`mapek.monitor.>`: the server may map the subject itself into another).
    async fn why_unanswered(&mut self, subject: &str) -> String {
        if let Some((asked, why)) = &self.unanswered
            && asked.elapsed() < Duration::from_secs(1)
        {
            return why.clone();
        }
        let lookup = tokio::time::timeout(
            Duration::from_secs(2),
            self.js.stream_by_subject(family_of(subject)),
        )
        .await;
        let why = match lookup {
            Ok(Ok(stream)) => format!(
                "stream {stream} has no leader now (an election, or too few of its servers \
                 up): not stored; publish it again, its id keeps it stored once"
            ),
            Ok(Err(e)) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                "no stream stores this subject: run `mapek streams apply`".to_owned()
            }
            _ => "JetStream did not answer (the cluster is electing a leader, or the client \
                  is reconnecting): not stored; publish it again, its id keeps it stored once"
                .to_owned(),
        };
        self.unanswered = Some((Instant::now(), why.clone()));
        why
    }
}
