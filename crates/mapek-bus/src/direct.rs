//! Reading a stream without a consumer: batched direct gets (nats-server 2.11 or newer).
//!
//! A [`Reader`] asks a stream for the next batch of stored messages that match a subject
//! filter, from a sequence or a time, and hands them out one at a time. It creates nothing on
//! the server and acknowledges nothing: all it needs is the stream's info and
//! `$JS.API.DIRECT.GET.<stream>`, so a read-only identity can follow the whole log, and
//! nothing a reader does changes what the workers see (ADR 0022).
//!
//! Any replica of a stream may answer a direct get, and a follower may not hold the newest
//! messages yet. A read up to a known sequence ([`Reader::next_through`]) therefore asks the
//! stream's leader before it reports the end. Following live is polling: when nothing new is
//! stored, the reader asks again after a wait that doubles from 1 ms up to [`IDLE_POLL`].
//!
//! A request that gets no answer (a lost server, a leader election) is asked again with
//! backoff for up to [`RIDE_THROUGH`]; a stream that no longer exists is an error at once.
//! [`last_per_subject`] reads the last message of each subject (a bucket's keys) in one go.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::subscriber::StartAt;
use crate::{BusError, JetStream};

/// How many messages one request asks for.
const BATCH: usize = 512;
/// How many bytes one answer may carry, so a reader is never flooded.
const MAX_BYTES: usize = 4 << 20;
/// How long an answer may take before the request counts as lost.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// The longest wait between two requests while nothing new is stored.
pub const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long requests may keep failing before a read gives up with an error.
pub const RIDE_THROUGH: Duration = Duration::from_secs(60);
/// The headers a direct get adds to a stored message, removed before it is handed out.
const ADDED: [&str; 6] = [
    "Nats-Stream",
    "Nats-Subject",
    "Nats-Sequence",
    "Nats-Time-Stamp",
    "Nats-Num-Pending",
    "Nats-Last-Sequence",
];

/// One message as the stream stores it.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The stream it is stored in.
    pub stream: Arc<str>,
    /// Its stream sequence.
    pub seq: u64,
    /// The subject it was stored under.
    pub subject: String,
    /// When the server stored it.
    pub stored: OffsetDateTime,
    /// How many messages matching the filter the stream held after it when it was read.
    pub pending: u64,
    /// Its headers as published (`None` when it has none).
    pub headers: Option<HeaderMap>,
    /// Its body.
    pub payload: Bytes,
}

/// Where the next request starts.
#[derive(Clone, Copy, Debug)]
enum From {
    Seq(u64),
    Time(OffsetDateTime),
}

/// How one request ended.
enum Answer {
    /// What the stream holds from the start asked for is buffered (nothing, at the end).
    Read,
    /// Nothing answered, or the answer broke off: ask again later.
    Lost(String),
}

/// Reads one stream through a subject filter by batched direct gets.
pub struct Reader {
    client: async_nats::Client,
    stream: Stream,
    name: Arc<str>,
    filter: String,
    from: From,
    buffered: VecDeque<Stored>,
    replies: async_nats::Subscriber,
    inbox: String,
    asked: u64,
    /// The reply subject of the request sent and not fully answered yet.
    in_flight: Option<String>,
    idle: Duration,
}

impl Reader {
    /// Reads `stream` through `filter` (`mapek.plan.>`) from `start`. Fails if the stream does
    /// not exist.
    pub async fn open(
        js: &JetStream,
        stream: &str,
        filter: &str,
        start: StartAt,
    ) -> Result<Self, BusError> {
        Self::open_existing(js, stream, filter, start)
            .await?
            .ok_or_else(|| {
                consumer_error(
                    stream,
                    "no such stream; has `mapek streams apply` been run on this server?".into(),
                )
            })
    }

    /// As [`Reader::open`], but `None` when the stream does not exist.
    pub async fn open_existing(
        js: &JetStream,
        stream: &str,
        filter: &str,
        start: StartAt,
    ) -> Result<Option<Self>, BusError> {
        let failed = |detail: String| consumer_error(stream, detail);
        let handle = match js.get_stream(stream).await {
            Ok(handle) => handle,
            Err(e) if crate::streams::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(failed(format!("cannot look it up: {e}"))),
        };
        let from = match start {
            StartAt::New => From::Seq(handle.cached_info().state.last_sequence + 1),
            StartAt::All => From::Seq(1),
            StartAt::Since(t) => From::Time(t),
            StartAt::Sequence(seq) => From::Seq(seq.max(1)),
        };
        // A filter that matches everything the stream stores is sent as `>`: nats-server then
        // reads on in sequence, where a wildcard filter makes it look through each block's
        // subjects for every message (one per node in a monitor stream).
        let filter = match covers(filter, &stored_patterns(&handle.cached_info().config)) {
            true => ">",
            false => filter,
        };
        let client = js.client();
        let inbox = client.new_inbox();
        let replies = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| failed(format!("cannot subscribe to its answers: {e}")))?;
        Ok(Some(Self {
            client,
            stream: handle,
            name: Arc::from(stream),
            filter: filter.to_owned(),
            from,
            buffered: VecDeque::new(),
            replies,
            inbox,
            asked: 0,
            in_flight: None,
            idle: Duration::ZERO,
        }))
    }

    /// The next message stored by now, or `None` when the reader has read everything the
    /// answering replica holds.
    pub async fn next_stored(&mut self) -> Result<Option<Stored>, BusError> {
        if self.buffered.is_empty() {
            self.fill().await?;
        }
        let next = self.buffered.pop_front();
        if next.is_some() {
            self.idle = Duration::ZERO;
        }
        Ok(next)
    }

    /// The stream's last sequence when the reader opened, as its leader told.
    pub fn last_at_open(&self) -> u64 {
        self.stream.cached_info().state.last_sequence
    }

    /// The next message, waiting for it to be stored.
    pub async fn next(&mut self) -> Result<Stored, BusError> {
        loop {
            if let Some(stored) = self.next_stored().await? {
                return Ok(stored);
            }
            tokio::time::sleep(self.idle_step()).await;
        }
    }

    /// How long to wait before asking again for what is not stored yet: 1 ms, doubling up
    /// to [`IDLE_POLL`] while nothing arrives.
    pub fn idle_step(&mut self) -> Duration {
        self.idle = (self.idle * 2).clamp(Duration::from_millis(1), IDLE_POLL);
        self.idle
    }

    /// Starts the waits of [`Reader::idle_step`] again from 1 ms.
    pub fn reset_idle(&mut self) {
        self.idle = Duration::ZERO;
    }

    /// The next message stored at or before sequence `last`; `None` once the stream's
    /// leader confirms there is none left up to it.
    pub async fn next_through(&mut self, last: u64) -> Result<Option<Stored>, BusError> {
        loop {
            if let From::Seq(seq) = self.from
                && seq > last
                && self.buffered.is_empty()
            {
                return Ok(None);
            }
            match self.next_stored().await? {
                Some(stored) if stored.seq <= last => return Ok(Some(stored)),
                Some(stored) => {
                    self.buffered.push_front(stored);
                    return Ok(None);
                }
                None if !self.leader_holds_more(last).await? => return Ok(None),
                // The replica that answered has not stored all the leader has yet.
                None => tokio::time::sleep(self.idle_step()).await,
            }
        }
    }

    /// Whether the stream's leader stores a message matching the filter from the next
    /// sequence up to `last`.
    async fn leader_holds_more(&self, last: u64) -> Result<bool, BusError> {
        let From::Seq(seq) = self.from else {
            return Ok(false); // nothing was stored after the start time
        };
        let asked = self
            .stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(self.filter.clone())
            .send()
            .await;
        match asked {
            Ok(message) => Ok(message.sequence <= last),
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(false),
            Err(e) => Err(consumer_error(
                &self.name,
                format!("asking its leader: {e}"),
            )),
        }
    }

    /// Asks for the next batch until an answer comes, with backoff, for up to
    /// [`RIDE_THROUGH`].
    async fn fill(&mut self) -> Result<(), BusError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let detail = match self.ask().await? {
                Answer::Read => return Ok(()),
                Answer::Lost(detail) => detail,
            };
            if started.elapsed() > RIDE_THROUGH {
                return Err(consumer_error(
                    &self.name,
                    format!("no answer for {} s: {detail}", RIDE_THROUGH.as_secs()),
                ));
            }
            tracing::warn!(stream = %self.name, %detail, "reading the stream: asking again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Sends a request unless one is on its way, and buffers its answer.
    async fn ask(&mut self) -> Result<Answer, BusError> {
        if self.in_flight.is_none()
            && let Err(e) = self.send().await
        {
            return Ok(Answer::Lost(e));
        }
        let answer = self.collect().await;
        if !matches!(answer, Ok(Answer::Read)) {
            self.in_flight = None; // given up on: a late answer is skipped
        }
        answer
    }

    /// Sends the request for the batch after what is read.
    async fn send(&mut self) -> Result<(), String> {
        self.asked += 1;
        let reply = format!("{}.{}", self.inbox, self.asked);
        let subject = format!("$JS.API.DIRECT.GET.{}", self.name);
        self.client
            .publish_with_reply(subject, reply.clone(), self.request())
            .await
            .map_err(|e| e.to_string())?;
        self.in_flight = Some(reply);
        Ok(())
    }

    /// Buffers the answer to the request on its way. When the stream holds more, the next
    /// batch is asked for at once, so the server sends it while this one is handed out.
    async fn collect(&mut self) -> Result<Answer, BusError> {
        let reply = self.in_flight.clone().unwrap_or_default();
        loop {
            let message = match tokio::time::timeout(ANSWER_WAIT, self.replies.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(Answer::Lost("the connection closed".to_owned())),
                Err(_) => return Ok(Answer::Lost("timed out".to_owned())),
            };
            if message.subject.as_str() != reply {
                continue; // the late answer to a request given up on
            }
            match message.status.map(|s| s.as_u16()) {
                None | Some(200) => {
                    let stored = self.stored(message)?;
                    self.from = From::Seq(stored.seq + 1);
                    self.buffered.push_back(stored);
                }
                Some(204) => {
                    self.in_flight = None;
                    if pending_after(&message) > 0 {
                        // Should it fail, the next read asks again.
                        let _ = self.send().await;
                    }
                    return Ok(Answer::Read);
                }
                // Nothing (more) matches from the start asked for.
                Some(404) => {
                    self.in_flight = None;
                    return Ok(Answer::Read);
                }
                Some(503) => return self.no_responders().await,
                _ => return Err(self.refused(&message)),
            }
        }
    }

    /// The body of the next request.
    fn request(&self) -> Bytes {
        let mut request = serde_json::json!({
            "batch": BATCH,
            "max_bytes": MAX_BYTES,
            "next_by_subj": self.filter,
        });
        match self.from {
            From::Seq(seq) => request["seq"] = seq.into(),
            From::Time(t) => {
                request["start_time"] = t.format(&Rfc3339).unwrap_or_default().into();
            }
        }
        Bytes::from(request.to_string())
    }

    /// No server answers for the stream: it is gone, or its servers are (then ask again).
    async fn no_responders(&self) -> Result<Answer, BusError> {
        let js = async_nats::jetstream::new(self.client.clone());
        match js.get_stream(self.name.as_ref()).await {
            Err(e) if crate::streams::is_not_found(&e) => Err(consumer_error(
                &self.name,
                "the stream no longer exists".to_owned(),
            )),
            _ => Ok(Answer::Lost("no server answered".to_owned())),
        }
    }

    /// An answer that is an error: the request itself is wrong.
    fn refused(&self, message: &async_nats::Message) -> BusError {
        let status = message.status.unwrap_or(StatusCode::OK);
        let why = message.description.as_deref().unwrap_or("");
        consumer_error(
            &self.name,
            format!("a direct get was refused: {} {why}", status.as_u16()),
        )
    }

    /// A stored message from a direct get's answer.
    fn stored(&self, message: async_nats::Message) -> Result<Stored, BusError> {
        stored_from(&self.name, message).map_err(|detail| consumer_error(&self.name, detail))
    }
}

/// The last message of each subject matching `filter` in `stream` (`$KV.MAPEK_LEASES.>`: a
/// bucket's keys, their deletions included), read by one direct get. At most 1 024 subjects.
pub async fn last_per_subject(
    js: &JetStream,
    stream: &str,
    filter: &str,
) -> Result<Vec<Stored>, BusError> {
    let failed = |detail: String| consumer_error(stream, detail);
    let request = serde_json::json!({ "multi_last": [filter], "max_bytes": MAX_BYTES });
    let client = js.client();
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| failed(e.to_string()))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            Bytes::from(request.to_string()),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut out = Vec::new();
    let name: Arc<str> = Arc::from(stream);
    loop {
        let message = tokio::time::timeout(ANSWER_WAIT, replies.next())
            .await
            .map_err(|_| failed("no answer to a direct get".to_owned()))?
            .ok_or_else(|| failed("the connection closed".to_owned()))?;
        match message.status.map(|s| s.as_u16()) {
            None | Some(200) => out.push(stored_from(&name, message).map_err(&failed)?),
            Some(204) => return Ok(out),
            Some(404) => return Ok(Vec::new()),
            Some(status) => {
                let why = message.description.unwrap_or_default();
                return Err(failed(format!("a direct get was refused: {status} {why}")));
            }
        }
    }
}

/// The subjects a stream stores its messages under, as patterns: its subjects, with those its
/// subject transform takes replaced by the transform's destination (each `{{…}}` a `*`).
fn stored_patterns(config: &async_nats::jetstream::stream::Config) -> Vec<String> {
    let Some(transform) = &config.subject_transform else {
        return config.subjects.clone();
    };
    let destination = transform
        .destination
        .split('.')
        .map(|t| if t.starts_with("{{") { "*" } else { t })
        .collect::<Vec<_>>()
        .join(".");
    let mut patterns: Vec<String> = config
        .subjects
        .iter()
        .filter(|s| !covers(&transform.source, std::slice::from_ref(*s)))
        .cloned()
        .collect();
    patterns.push(destination);
    patterns
}

/// Whether every subject matching one of `patterns` also matches `filter`.
fn covers(filter: &str, patterns: &[String]) -> bool {
    let within = |pattern: &str| {
        let mut f = filter.split('.');
        let mut p = pattern.split('.');
        loop {
            match (f.next(), p.next()) {
                (Some(">"), Some(_)) => return true,
                (Some(_), Some(">")) => return false,
                (Some("*"), Some(_)) => continue,
                (Some(a), Some(b)) if a == b && b != "*" => continue,
                (None, None) => return true,
                _ => return false,
            }
        }
    };
    !patterns.is_empty() && patterns.iter().all(|p| within(p))
}

/// How many messages matching the filter an end-of-batch answer says are left.
fn pending_after(message: &async_nats::Message) -> u64 {
    let header = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Num-Pending"));
    header.map_or(0, |v| v.as_str().parse().unwrap_or(0))
}

/// Whether a bucket entry read by a direct get is a deletion (a delete or purge marker).
pub fn is_deleted(entry: &Stored) -> bool {
    entry
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
}

/// A stored message from a direct get's answer: its place from the headers the server adds,
/// and its own headers without them.
fn stored_from(stream: &Arc<str>, message: async_nats::Message) -> Result<Stored, String> {
    let headers = message
        .headers
        .ok_or("a direct get answered without headers")?;
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .ok_or_else(|| format!("a direct get answered without {name}"))
    };
    let seq = header("Nats-Sequence")?
        .parse()
        .map_err(|e| format!("Nats-Sequence: {e}"))?;
    let stored = OffsetDateTime::parse(&header("Nats-Time-Stamp")?, &Rfc3339)
        .map_err(|e| format!("Nats-Time-Stamp: {e}"))?;
    let pending = header("Nats-Num-Pending").map_or(0, |v| v.parse().unwrap_or(0));
    let subject = header("Nats-Subject")?;
    let own: HeaderMap = headers
        .iter()
        .filter(|(name, _)| !ADDED.contains(&name.as_ref()))
        .flat_map(|(name, values)| values.iter().map(move |v| (name.clone(), v.clone())))
        .collect();
    Ok(Stored {
        stream: stream.clone(),
        seq,
        subject,
        stored,
        pending,
        headers: (own.iter().next().is_some()).then_some(own),
        payload: message.payload,
    })
}

fn consumer_error(stream: &str, detail: String) -> BusError {
    BusError::Consumer {
        stream: stream.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_filter_covers_a_stream_when_it_matches_every_subject_stored() {
        let monitor_1 = patterns(&["mapek.monitor.4.*", "mapek.monitor.5.*"]);
        assert!(covers("mapek.monitor.>", &monitor_1));
        assert!(covers("mapek.monitor.*.*", &monitor_1));
        assert!(
            !covers("mapek.monitor.4.>", &monitor_1),
            "one partition of two"
        );
        assert!(!covers("mapek.monitor.*", &monitor_1), "too short");
        assert!(covers(">", &patterns(&["mapek.dlq.>"])));
        assert!(!covers("mapek.dlq.plan", &patterns(&["mapek.dlq.>"])));
        assert!(!covers("mapek.dlq.*", &patterns(&["mapek.dlq.>"])));
        assert!(!covers("mapek.>", &[]));
    }

    #[test]
    fn a_transformed_stream_stores_under_its_destination() {
        let config = async_nats::jetstream::stream::Config {
            subjects: patterns(&["mapek.plan.*"]),
            subject_transform: Some(async_nats::jetstream::stream::SubjectTransform {
                source: "mapek.plan.*".into(),
                destination: "mapek.plan.{{partition(8,1)}}.{{wildcard(1)}}".into(),
            }),
            ..Default::default()
        };
        assert_eq!(stored_patterns(&config), ["mapek.plan.*.*"]);
        assert!(covers("mapek.plan.>", &stored_patterns(&config)));
        assert!(!covers("mapek.plan.3.>", &stored_patterns(&config)));
    }
}
