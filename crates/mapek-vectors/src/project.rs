//! The projection: the analyze, plan and knowledge streams folded into incident points.
//!
//! One projection per stream, run by [`mapek_bus::projection`], each from just after its
//! stream's offset stored in the index's offsets point (or from the beginning of a new index).
//! Events are taken in batches: each touched incident is read from the index once, the
//! batch's events are folded into it ([`Incident`]'s `apply_*`), and the changed incidents are
//! written back in one update *together with* the new offsets. A crash before the write loses
//! nothing (the batch is read again); after it, nothing is read twice. An event at or below
//! its stream's stored offset is skipped, and folding is idempotent anyway, so a redelivery
//! changes nothing. The three projections share the index and its offsets, so they take
//! turns: one batch is read, folded and written before the next is.
//!
//! When the index cannot be read or written (a Qdrant server that went away), the live
//! projection ([`project_with`]) pauses and tries the same batch again, with a backoff up to
//! [`MAX_BACKOFF`], counting each failure; once the index answers it goes on from where it
//! was, with no gap. A log it cannot read (a leader election, a lost server) is counted the
//! same way, and a second later the stream is followed again from the stored offset. A
//! rebuild fails at once instead, naming the index or the stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::Message;
use mapek_bus::headers::decode_body;
use mapek_bus::projection::{
    self, Batch, Commit, Failed, Failure, Projections, RunConfig, RunError, Store, seq,
};
use mapek_bus::{BusError, JetStream};
use mapek_domain::{Decision, Event as _, Outcome, Phase, Symptom};
use tokio::sync::Mutex;

use crate::error::VectorError;
use crate::incident::{Incident, Offsets};
use crate::index::IncidentIndex;

/// The most events folded into one write.
const BATCH: usize = 512;

/// The longest pause between two tries of an index that does not answer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The streams projected, by phase: symptoms, decisions, outcomes.
const PROJECTED: [Phase; 3] = [Phase::Analyze, Phase::Plan, Phase::Knowledge];

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
    /// Reads and writes of the index, and reads of the log, that failed and were tried again.
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
    let config = RunConfig {
        batch: BATCH,
        max_backoff: MAX_BACKOFF,
        ..RunConfig::default()
    };
    run(&js, index, failures, config, shutdown).await
}

/// Clears `index` and projects the streams into it from their beginning, up to what they
/// hold now, then returns: `mapek knowledge rebuild`.
pub async fn rebuild(
    js: &JetStream,
    index: Arc<dyn IncidentIndex>,
) -> Result<ProjectStats, VectorError> {
    index.clear().await?;
    // Graphs once at the end, not again at every segment merge along the way.
    index.hold_optimizing(true).await?;
    let config = RunConfig {
        batch: BATCH,
        until_caught_up: true,
        patient: false,
        ..RunConfig::default()
    };
    let projected = run(
        js,
        index.clone(),
        Arc::default(),
        config,
        std::future::pending(),
    )
    .await;
    // Released whatever happened, and a failed projection's error told first.
    let released = index.hold_optimizing(false).await;
    let stats = projected?;
    released?;
    Ok(stats)
}

/// Runs the three streams' projections into `index` as `config` says, until `shutdown`.
async fn run(
    js: &JetStream,
    index: Arc<dyn IncidentIndex>,
    failures: Arc<AtomicU64>,
    config: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ProjectStats, VectorError> {
    let failures_before = failures.load(Ordering::Relaxed);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut projections = Projections::default();
    for phase in PROJECTED {
        let store = IndexStore {
            index: index.clone(),
            phase,
            shared: shared.clone(),
            failures: failures.clone(),
        };
        let (js, config) = (js.clone(), config.clone());
        projections.spawn(move |stop| async move {
            let stream = phase.stream().to_owned();
            projection::run(js, stream, store, config, stop)
                .await
                .map_err(stopped)
        });
    }
    let panicked = |detail| {
        VectorError::Bus(BusError::Stream {
            stream: "the incident projection".into(),
            detail,
        })
    };
    projections.until(shutdown, panicked).await?;
    let mut stats = shared.lock().await.stats.clone();
    stats.failures = failures.load(Ordering::Relaxed) - failures_before;
    Ok(stats)
}

/// What stopped a stream's projection, as the index's error.
fn stopped(e: RunError<VectorError>) -> VectorError {
    match e {
        RunError::Store(e) => e,
        RunError::Log { stream, detail } => VectorError::Bus(BusError::Stream { stream, detail }),
        RunError::Crashed { stream, seq } => VectorError::Bus(BusError::Stream {
            stream,
            detail: format!("stopped after committing through sequence {seq} (test hook)"),
        }),
    }
}

/// What the three streams' projections share: the offsets as last written, and the counts.
#[derive(Default)]
struct Shared {
    /// Read from the index by the first projection to start.
    offsets: Option<Offsets>,
    stats: ProjectStats,
}

/// The index, as the store of one stream's projection.
struct IndexStore {
    index: Arc<dyn IncidentIndex>,
    /// The stream's phase: analyze, plan or knowledge.
    phase: Phase,
    /// Locked for each whole read, fold and write, so that the three take turns.
    shared: Arc<Mutex<Shared>>,
    failures: Arc<AtomicU64>,
}

impl Store for IndexStore {
    type Error = VectorError;

    fn describe(&self) -> String {
        format!("the incident index at {}", self.index.location())
    }

    async fn offset(&mut self) -> Result<u64, Failure<VectorError>> {
        let mut shared = self.shared.lock().await;
        let mut offsets = self.offsets(&mut shared).await?;
        Ok(*stream_offset(&mut offsets, self.phase))
    }

    async fn apply(&mut self, batch: Batch<'_>) -> Result<Commit, Failure<VectorError>> {
        let mut shared = self.shared.lock().await;
        let before = self.offsets(&mut shared).await?;
        let mut offsets = before;
        let stored = stream_offset(&mut offsets, self.phase);
        let (mut events, mut skipped) = (0, 0);
        let mut touched: BTreeMap<String, (Incident, bool)> = BTreeMap::new();
        for m in batch.messages {
            events += 1;
            if seq(m) <= *stored {
                skipped += 1;
                continue;
            }
            *stored = seq(m);
            if batch.dead_lettered {
                continue;
            }
            // What does not decode was dead-lettered by the worker that consumed it.
            let Some(fold) = Fold::decode(self.phase, m) else {
                continue;
            };
            self.fold(&fold, &mut touched).await?;
        }
        let changed: Vec<Incident> = touched
            .into_values()
            .filter(|(_, c)| *c)
            .map(|(i, _)| i)
            .collect();
        let written = changed.len() as u64;
        if written > 0 || offsets != before {
            let write = self.index.write(changed, offsets).await;
            write.map_err(Failure::Unavailable)?;
        }
        shared.offsets = Some(offsets);
        let stats = &mut shared.stats;
        stats.events += events;
        stats.skipped += skipped;
        stats.written += written;
        stats.offsets = offsets;
        Ok(Commit::Done)
    }

    fn count(&self, _: Failed) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

impl IndexStore {
    /// The offsets as last written, read from the index the first time.
    async fn offsets(&self, shared: &mut Shared) -> Result<Offsets, Failure<VectorError>> {
        if let Some(offsets) = shared.offsets {
            return Ok(offsets);
        }
        let offsets = self.index.offsets().await.map_err(Failure::Unavailable)?;
        shared.offsets = Some(offsets);
        shared.stats.offsets = offsets;
        Ok(offsets)
    }

    /// Folds `fold` into its incident among `touched`, read from the index the first time.
    async fn fold(
        &self,
        fold: &Fold,
        touched: &mut BTreeMap<String, (Incident, bool)>,
    ) -> Result<(), Failure<VectorError>> {
        if !fold.matters() {
            return Ok(());
        }
        let (id, node) = fold.incident();
        if !touched.contains_key(id) {
            let found = self.index.get(id).await.map_err(Failure::Unavailable)?;
            let incident = found.unwrap_or_else(|| Incident::new(id, node));
            touched.insert(id.to_owned(), (incident, false));
        }
        let (incident, changed) = touched.get_mut(id).expect("inserted above");
        *changed |= fold.apply(incident);
        Ok(())
    }
}

/// The offset of `phase`'s stream among `offsets`.
fn stream_offset(offsets: &mut Offsets, phase: Phase) -> &mut u64 {
    match phase {
        Phase::Analyze => &mut offsets.analyze,
        Phase::Plan => &mut offsets.plan,
        _ => &mut offsets.knowledge,
    }
}

/// A decoded event to fold.
enum Fold {
    Symptom(Symptom),
    Decision(Decision),
    Outcome(Outcome),
}

impl Fold {
    /// `m` decoded as the event `phase`'s stream holds; `None` if it does not decode.
    fn decode(phase: Phase, m: &Message) -> Option<Fold> {
        let (h, body) = (m.headers.as_ref(), &m.payload);
        match phase {
            Phase::Analyze => decode_body(h, body).ok().map(Fold::Symptom),
            Phase::Plan => decode_body(h, body).ok().map(Fold::Decision),
            _ => decode_body(h, body).ok().map(Fold::Outcome),
        }
    }

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
