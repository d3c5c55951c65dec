//! The projections: one consumer per stream, one transaction per fetched batch, run by
//! [`mapek_bus::projection`]; this module supplies the read model as their store
//! ([`sql`]).
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

use std::time::Duration;

use mapek_bus::projection::{self, Projections, RunConfig};
use mapek_bus::{JetStream, layout};
use mapek_domain::Phase;

use crate::redis::Redis;
use crate::{KnowledgeError, ReadModel};

mod sql;
mod stats;

use sql::SqlStore;
pub use stats::{Counts, ProjectionStats, StreamCounters};

/// The phases projected into the read model, in loop order (each through all its streams).
pub const PROJECTED: [Phase; 5] = [
    Phase::Monitor,
    Phase::Analyze,
    Phase::Plan,
    Phase::Execute,
    Phase::Knowledge,
];

/// A test hook: stop a projection after a commit and before its ack, as a crash would (see
/// [`mapek_bus::projection::CrashHook`]).
pub use mapek_bus::projection::CrashHook;

/// Which of the log's streams a projection writes into the read model.
///
/// A node's telemetry is stored in one stream and its rows are written from that stream
/// alone, so the telemetry streams can be projected by different processes at once, each
/// with its own stored sequence; everything else (symptoms, decisions, actions, outcomes)
/// is one incident's story across phases and is projected by one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Part {
    /// Every stream of the five phases.
    #[default]
    Whole,
    /// Every stream but telemetry's: analyze, plan, execute and knowledge.
    Incidents,
    /// One telemetry stream, by name (`MAPEK_MONITOR_1`).
    Telemetry(String),
}

impl Part {
    /// Whether this part projects streams of `phase`.
    fn has_phase(&self, phase: Phase) -> bool {
        match self {
            Part::Whole => true,
            Part::Incidents => phase != Phase::Monitor,
            Part::Telemetry(_) => phase == Phase::Monitor,
        }
    }

    /// Whether this part projects `stream`, one of a phase it has.
    fn has_stream(&self, stream: &str) -> bool {
        match self {
            Part::Telemetry(name) => name == stream,
            Part::Whole | Part::Incidents => true,
        }
    }
}

/// How the projections read the log.
#[derive(Clone)]
pub struct ProjectionConfig {
    /// Which streams are projected.
    pub part: Part,
    /// Durable consumers named `<prefix>-<phase>` on each of the phase's streams (their lag
    /// shows on the server), or ephemeral ones when `None` (a rebuild, which must not disturb
    /// the live consumers).
    pub durable_prefix: Option<String>,
    /// The most messages written in one transaction, telemetry apart.
    pub batch: usize,
    /// The most telemetry samples written in one transaction. A batch writes one row per
    /// node, its latest sample, so a batch bigger than the mesh costs as many rows as there
    /// are nodes however often they report: a projection that falls behind takes bigger
    /// batches and catches up.
    pub telemetry_batch: usize,
    /// How long a telemetry batch waits for more samples once it has one, when the stream
    /// holds no more yet: a node that reports several times within it costs one row, so a
    /// projection that keeps up writes about a row per node per linger, not per sample.
    /// `mapek status` shows each node's state at most this much older.
    pub telemetry_linger: Duration,
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
            part: Part::Whole,
            durable_prefix: Some("knowledge-sql".into()),
            batch: 1000,
            telemetry_batch: 20_000,
            telemetry_linger: Duration::from_secs(1),
            until_caught_up: false,
            max_backoff: Duration::from_secs(5),
            crash_after_commit: None,
            redeliver_from: None,
        }
    }
}

impl ProjectionConfig {
    /// The name of the durable consumer on each of `phase`'s streams (`knowledge-sql-monitor`),
    /// `None` for ephemeral ones. A lease around a projection is named after it, so that
    /// `mapek status` finds who reads the consumer.
    pub fn durable(&self, phase: Phase) -> Option<String> {
        let prefix = self.durable_prefix.as_ref()?;
        Some(format!("{prefix}-{}", phase.token()))
    }

    /// How the projection of one of `phase`'s streams reads it: it waits out a store or a
    /// log that fails.
    fn run_config(&self, phase: Phase) -> RunConfig {
        RunConfig {
            durable: self.durable(phase),
            batch: if phase == Phase::Monitor {
                self.telemetry_batch
            } else {
                self.batch
            },
            linger: if phase == Phase::Monitor && !self.until_caught_up {
                self.telemetry_linger
            } else {
                Duration::ZERO
            },
            until_caught_up: self.until_caught_up,
            patient: true,
            max_backoff: self.max_backoff,
            crash_after_commit: self.crash_after_commit.clone(),
            redeliver_from: self.redeliver_from,
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

/// [`project`] with a config and counters of the caller's: the streams of `config.part`.
/// Returns when `shutdown` completes, when every stream is caught up (with
/// `until_caught_up`), or at the first error a projection cannot wait out (the log failed,
/// or a test hook fired). The streams of each phase are those the server has when it starts
/// ([`layout::streams_of`]); a telemetry stream it does not have is an error.
pub async fn project_with(
    js: JetStream,
    read_model: ReadModel,
    redis: Option<Redis>,
    config: ProjectionConfig,
    stats: ProjectionStats,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KnowledgeError> {
    let mut projections = Projections::default();
    let mut projected = 0;
    for phase in PROJECTED {
        if !config.part.has_phase(phase) {
            continue;
        }
        let streams = layout::streams_of(&js, phase)
            .await
            .map_err(|e| KnowledgeError::Log {
                stream: phase.stream().to_owned(),
                detail: e.to_string(),
            })?;
        for stored in streams {
            if !config.part.has_stream(&stored.name) {
                continue;
            }
            projected += 1;
            let store = SqlStore {
                js: js.clone(),
                read_model: read_model.clone(),
                redis: redis.clone(),
                counters: stats.of_stream(&stored.name),
                stream: stored.name.clone(),
                phase,
            };
            let run = config.run_config(phase);
            let js = js.clone();
            let url = read_model.url().to_owned();
            projections.spawn(|stop| async move {
                projection::run(js, stored.name, store, run, stop)
                    .await
                    .map_err(|e| sql::failed(e, &url))
            });
        }
    }
    if let (Part::Telemetry(stream), 0) = (&config.part, projected) {
        return Err(KnowledgeError::Log {
            stream: stream.clone(),
            detail: "no such telemetry stream: run `mapek streams apply`".into(),
        });
    }
    let panicked = |detail| KnowledgeError::Log {
        stream: "?".into(),
        detail,
    };
    projections.until(shutdown, panicked).await
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
