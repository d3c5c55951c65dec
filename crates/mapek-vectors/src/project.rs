//! The projection: the analyze, plan and knowledge streams folded into incident points.
//!
//! Three ordered consumers, one per stream, start just after the sequence stored in the
//! index's offsets point (or at the beginning of a new index). Events are taken in batches:
//! each touched incident is read from the index once, the batch's events are folded into it
//! ([`Incident`]'s `apply_*`), and the changed incidents are written back in one update
//! *together with* the new offsets. A crash before the write loses nothing (the batch is read
//! again); after it, nothing is read twice. An event at or below its stream's stored offset
//! is skipped, and folding is idempotent anyway, so a redelivery changes nothing.
//!
//! When the index cannot be read or written (a Qdrant server that went away), the live
//! projection ([`project_with`]) pauses and tries the same read or write again, with a backoff
//! up to [`MAX_BACKOFF`], counting each failure; once the index answers it goes on from where
//! it was, with no gap. A log it cannot read (a leader election, a lost server) is counted the
//! same way, and a second later the streams are followed again from the stored offsets. A
//! rebuild fails at once instead, naming the index or the stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use mapek_bus::{BusError, JetStream, Received, StartAt, Subscriber};
use mapek_codec::AvroEvent;
use mapek_domain::{Decision, Event, Outcome, Symptom};

use crate::error::VectorError;
use crate::incident::{Incident, Offsets};
use crate::index::IncidentIndex;

/// The most events folded into one write.
const BATCH: usize = 512;

/// The longest pause between two tries of an index that does not answer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a projection run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectStats {
    /// Events read from MAPEK_ANALYZE, MAPEK_PLAN and MAPEK_KNOWLEDGE.
    pub events: u64,
    /// Events skipped as already applied (at or below the stored offset).
    pub skipped: u64,
    /// Incident points written (an incident written in two batches counts twice).
    pub written: u64,
    /// The offsets stored last.
    pub offsets: Offsets,
    /// Reads and writes of the index that failed and were tried again.
    pub failures: u64,
}

/// Runs the projection into `index` until `shutdown` completes, waiting out an index that
/// does not answer ([`project_with`]).
pub async fn project(
    js: JetStream,
    index: Arc<dyn IncidentIndex>,
    shutdown: impl Future<Output = ()>,
) -> Result<ProjectStats, VectorError> {
    project_with(js, index, Arc::default(), shutdown).await
}

/// [`project`], adding each failed read or write of the index, and each failed read of the
/// log, to `failures` as it happens
/// (`mapek run` exports it as `mapek_projection_failures_total{projection="incidents"}`).
pub async fn project_with(
    js: JetStream,
    index: Arc<dyn IncidentIndex>,
    failures: Arc<AtomicU64>,
    shutdown: impl Future<Output = ()>,
) -> Result<ProjectStats, VectorError> {
    let patience = Patience { failures };
    tokio::pin!(shutdown);
    loop {
        let ran = run(
            &js,
            index.as_ref(),
            None,
            Some(&patience),
            shutdown.as_mut(),
        )
        .await;
        match ran {
            Ok(stats) => return Ok(stats),
            // The log could not be read (a leader election, a lost server): count it, wait a
            // second, and follow the streams again from the offsets the index stores.
            Err(VectorError::Bus(e)) => {
                patience.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("reading the log failed ({e}); following it again in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(LOG_PAUSE) => {}
                    () = &mut shutdown => return Ok(ProjectStats::default()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pause before the live projection follows a log it failed to read again.
const LOG_PAUSE: Duration = Duration::from_secs(1);

/// How the live projection waits for its index.
struct Patience {
    failures: Arc<AtomicU64>,
}

/// Tries `op` on `index` until it succeeds, pausing after each failure, when `patience` is
/// given; once otherwise.
async fn patiently<'a, T>(
    patience: Option<&Patience>,
    index: &dyn IncidentIndex,
    doing: &str,
    mut op: impl FnMut() -> BoxFuture<'a, Result<T, VectorError>>,
) -> Result<T, VectorError> {
    let Some(patience) = patience else {
        return op().await;
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                patience.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "the incident index at {} failed {doing}: {e}; trying again in {backoff:?}",
                    index.location()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Clears `index` and projects the streams into it from their beginning, up to what they
/// hold now, then returns: `mapek knowledge rebuild`.
pub async fn rebuild(
    js: &JetStream,
    index: Arc<dyn IncidentIndex>,
) -> Result<ProjectStats, VectorError> {
    index.clear().await?;
    let until = Offsets {
        analyze: last_sequence::<Symptom>(js).await?,
        plan: last_sequence::<Decision>(js).await?,
        knowledge: last_sequence::<Outcome>(js).await?,
    };
    // Graphs once at the end, not again at every segment merge along the way.
    index.hold_optimizing(true).await?;
    let projected = run(
        js,
        index.as_ref(),
        Some(until),
        None,
        std::future::pending(),
    )
    .await;
    // Released whatever happened, and a failed projection's error told first.
    let released = index.hold_optimizing(false).await;
    let stats = projected?;
    released?;
    Ok(stats)
}

/// The last sequence `E`'s stream holds now.
async fn last_sequence<E: AvroEvent>(js: &JetStream) -> Result<u64, VectorError> {
    let stream = E::PHASE.stream();
    let failed = |detail: String| {
        VectorError::Bus(BusError::Stream {
            stream: stream.to_owned(),
            detail,
        })
    };
    let mut s = js.get_stream(stream).await.map_err(|e| {
        failed(format!(
            "{e}; has `mapek streams apply` been run on this server?"
        ))
    })?;
    let info = s.info().await.map_err(|e| failed(e.to_string()))?;
    Ok(info.state.last_sequence)
}

/// Opens `E`'s whole stream just after `applied`.
async fn follow<E: AvroEvent>(js: &JetStream, applied: u64) -> Result<Subscriber<E>, VectorError> {
    let start = match applied {
        0 => StartAt::All,
        n => StartAt::Sequence(n + 1),
    };
    Ok(Subscriber::open_subject(js, E::PHASE.stored_filter(None), start).await?)
}

/// One message from one of the three streams.
enum Input {
    Symptom(Received<Symptom>),
    Decision(Received<Decision>),
    Outcome(Received<Outcome>),
}

type Next<E> = Option<Result<Received<E>, BusError>>;

/// `None` when the connection closed for good.
fn wrap<E>(next: Next<E>, f: fn(Received<E>) -> Input) -> Result<Option<Input>, VectorError> {
    match next {
        None => Ok(None),
        Some(r) => Ok(Some(f(r?))),
    }
}

async fn run(
    js: &JetStream,
    index: &dyn IncidentIndex,
    until: Option<Offsets>,
    patience: Option<&Patience>,
    shutdown: impl Future<Output = ()>,
) -> Result<ProjectStats, VectorError> {
    let failures_before = patience.map_or(0, |p| p.failures.load(Ordering::Relaxed));
    let failures = || patience.map_or(0, |p| p.failures.load(Ordering::Relaxed)) - failures_before;
    tokio::pin!(shutdown);
    let mut offsets = tokio::select! {
        o = patiently(patience, index, "reading its offsets", || index.offsets()) => o?,
        () = &mut shutdown => return Ok(ProjectStats::default()),
    };
    let mut stats = ProjectStats {
        offsets,
        ..ProjectStats::default()
    };
    let done = |o: &Offsets| {
        until.is_some_and(|u| {
            o.analyze >= u.analyze && o.plan >= u.plan && o.knowledge >= u.knowledge
        })
    };
    if done(&offsets) {
        return Ok(stats);
    }
    let mut symptoms = follow::<Symptom>(js, offsets.analyze).await?;
    let mut decisions = follow::<Decision>(js, offsets.plan).await?;
    let mut outcomes = follow::<Outcome>(js, offsets.knowledge).await?;
    loop {
        let first = tokio::select! {
            () = &mut shutdown => break,
            n = symptoms.next() => wrap(n, Input::Symptom)?,
            n = decisions.next() => wrap(n, Input::Decision)?,
            n = outcomes.next() => wrap(n, Input::Outcome)?,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        // Take whatever else is already here, without waiting, up to a batch.
        while batch.len() < BATCH {
            let more = [
                symptoms
                    .next()
                    .now_or_never()
                    .map(|n| wrap(n, Input::Symptom)),
                decisions
                    .next()
                    .now_or_never()
                    .map(|n| wrap(n, Input::Decision)),
                outcomes
                    .next()
                    .now_or_never()
                    .map(|n| wrap(n, Input::Outcome)),
            ];
            let mut got = false;
            for m in more.into_iter().flatten() {
                if let Some(input) = m? {
                    batch.push(input);
                    got = true;
                }
            }
            if !got {
                break;
            }
        }
        // While the index is away the batch waits here; a shutdown then drops it unwritten,
        // to be read again by the next run.
        tokio::select! {
            applied = apply(index, patience, batch, &mut offsets, &mut stats) => applied?,
            () = &mut shutdown => break,
        }
        if done(&offsets) {
            break;
        }
    }
    stats.failures = failures();
    Ok(stats)
}

/// Folds `batch` into the incidents it touches and writes them with the new offsets.
async fn apply(
    index: &dyn IncidentIndex,
    patience: Option<&Patience>,
    batch: Vec<Input>,
    offsets: &mut Offsets,
    stats: &mut ProjectStats,
) -> Result<(), VectorError> {
    let before = *offsets;
    let mut touched: BTreeMap<String, (Incident, bool)> = BTreeMap::new();
    for input in batch {
        stats.events += 1;
        let (seq, stored, fold): (u64, &mut u64, Option<Fold>) = match input {
            Input::Symptom(r) => (
                r.stream_seq,
                &mut offsets.analyze,
                r.event.ok().map(Fold::Symptom),
            ),
            Input::Decision(r) => (
                r.stream_seq,
                &mut offsets.plan,
                r.event.ok().map(Fold::Decision),
            ),
            Input::Outcome(r) => (
                r.stream_seq,
                &mut offsets.knowledge,
                r.event.ok().map(Fold::Outcome),
            ),
        };
        if seq <= *stored {
            stats.skipped += 1;
            continue;
        }
        *stored = seq;
        // What does not decode was dead-lettered by the worker that consumed it.
        let Some(fold) = fold else { continue };
        if !fold.matters() {
            continue;
        }
        let (id, node) = fold.incident();
        if !touched.contains_key(id) {
            let found = patiently(patience, index, "reading an incident", || index.get(id)).await?;
            let incident = found.unwrap_or_else(|| Incident::new(id, node));
            touched.insert(id.to_owned(), (incident, false));
        }
        let (incident, changed) = touched.get_mut(id).expect("inserted above");
        *changed |= fold.apply(incident);
    }
    let changed: Vec<Incident> = touched
        .into_values()
        .filter(|(_, c)| *c)
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() && *offsets == before {
        return Ok(());
    }
    stats.written += changed.len() as u64;
    let offsets = *offsets;
    patiently(patience, index, "writing a batch", || {
        index.write(changed.clone(), offsets)
    })
    .await?;
    stats.offsets = offsets;
    Ok(())
}

/// A decoded event to fold.
enum Fold {
    Symptom(Symptom),
    Decision(Decision),
    Outcome(Outcome),
}

impl Fold {
    /// Only an opening symptom changes a point; updates and resolves are skipped without a
    /// read of the index.
    fn matters(&self) -> bool {
        match self {
            Fold::Symptom(s) => s.state == mapek_domain::SymptomState::Open,
            Fold::Decision(_) | Fold::Outcome(_) => true,
        }
    }

    fn incident(&self) -> (&str, &str) {
        match self {
            Fold::Symptom(s) => (&s.incident_id, s.node().as_str()),
            Fold::Decision(d) => (&d.incident_id, d.node().as_str()),
            Fold::Outcome(o) => (&o.incident_id, o.node().as_str()),
        }
    }

    fn apply(&self, incident: &mut Incident) -> bool {
        match self {
            Fold::Symptom(s) => incident.apply_symptom(s),
            Fold::Decision(d) => incident.apply_decision(d),
            Fold::Outcome(o) => incident.apply_outcome(o),
        }
    }
}
