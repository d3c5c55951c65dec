//! The two projections `mapek run --phase project` runs, each under a lease so one process
//! at a time writes a store (their offsets are the stores' own; two writers would race on
//! them), with their failures counted on `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mapek_bus::{BusError, JetStream};
use mapek_knowledge::{ProjectionConfig, ProjectionStats, Redis};
use mapek_loop::metrics::{DEAD_LETTERS, PROJECTION_FAILURES, RETRIES};
use mapek_vectors::{IncidentIndex, ProjectStats};

use super::Stores;
use super::workers::{Stop, Worker};
use crate::cmd::status::open_read_model;

/// The projection into the SQL read model (and Redis): one active copy, the others standing
/// by.
pub(super) async fn project_sql(worker: Worker, stores: Stores) -> anyhow::Result<String> {
    let work = |js, stop| sql(js, stores.database.clone(), stores.redis.clone(), stop);
    let say =
        |s: ProjectionStats| format!("{} events into the read model", s.total(|c| &c.applied));
    worker.singleton("knowledge-sql", work, say).await
}

/// The projection into the incident index: one active copy, the others standing by.
pub(super) async fn project_vectors(
    worker: Worker,
    index: Arc<dyn IncidentIndex>,
) -> anyhow::Result<String> {
    let work = |js, stop| vectors(js, index.clone(), stop);
    let say =
        |s: ProjectStats| format!("{} events, {} incident points written", s.events, s.written);
    worker.singleton("knowledge-vectors", work, say).await
}

/// Projects the log into the read model at `database`, and into Redis (URL and key prefix)
/// if given, until `stop`.
async fn sql(
    js: JetStream,
    database: String,
    redis: Option<(String, String)>,
    stop: Stop,
) -> Result<ProjectionStats, BusError> {
    let failed = |e: &dyn std::fmt::Display| BusError::Consumer {
        stream: "the SQL read model".into(),
        detail: e.to_string(),
    };
    let model = open_read_model(&database, true)
        .await
        .map_err(|e| failed(&format!("{e:#}")))?;
    let redis = match redis {
        Some((url, prefix)) => Some(
            Redis::connect_with_prefix(&url, &prefix)
                .await
                .map_err(|e| failed(&e))?,
        ),
        None => None,
    };
    let stats = ProjectionStats::default();
    let counters = sql_counters(&stats);
    let config = ProjectionConfig::default();
    let done = mapek_knowledge::project_with(js, model, redis, config, stats.clone(), stop).await;
    counters.into_iter().for_each(CounterExporter::finish);
    done.map(|()| stats).map_err(|e| failed(&e))
}

/// The SQL projection counts the writes that failed, the reads of the log that failed, and
/// the messages its store kept refusing; these pass them on to /metrics.
fn sql_counters(stats: &ProjectionStats) -> [CounterExporter; 3] {
    let counted = |total: fn(&ProjectionStats) -> u64| {
        let stats = stats.clone();
        move || total(&stats)
    };
    [
        CounterExporter::start(
            projection_failures("sql"),
            counted(|s| s.total(|c| &c.store_failures)),
        ),
        CounterExporter::start(
            |n| {
                RETRIES
                    .with_label_values(&["knowledge-sql", "read the log"])
                    .inc_by(n)
            },
            counted(|s| s.total(|c| &c.log_failures)),
        ),
        CounterExporter::start(
            |n| DEAD_LETTERS.with_label_values(&["knowledge-sql"]).inc_by(n),
            counted(|s| s.total(|c| &c.dead_lettered)),
        ),
    ]
}

/// Projects the log into the incident index until `stop`; the index's failed reads and
/// writes (the projection waits them out) are counted on /metrics.
async fn vectors(
    js: JetStream,
    index: Arc<dyn IncidentIndex>,
    stop: Stop,
) -> Result<ProjectStats, BusError> {
    let failures = Arc::new(AtomicU64::new(0));
    let watched = failures.clone();
    let exporter = CounterExporter::start(projection_failures("incidents"), move || {
        watched.load(Ordering::Relaxed)
    });
    let done = mapek_vectors::project_with(js, index, failures, stop).await;
    exporter.finish();
    done.map_err(|e| BusError::Consumer {
        stream: "the incident index".into(),
        detail: e.to_string(),
    })
}

/// Adds to the projection failures of `projection`.
fn projection_failures(projection: &'static str) -> impl Fn(u64) + Send + Sync + 'static {
    move |n| {
        PROJECTION_FAILURES
            .with_label_values(&[projection])
            .inc_by(n)
    }
}

/// Passes on what a running total has added since the last time, every 2 s, and once more
/// when it finishes.
struct CounterExporter {
    task: tokio::task::JoinHandle<()>,
    export: Arc<dyn Fn() + Send + Sync>,
}

impl CounterExporter {
    /// Starts passing to `add` what `count` (a running total) has added, every 2 s.
    fn start(
        add: impl Fn(u64) + Send + Sync + 'static,
        count: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        let exported = AtomicU64::new(0);
        let export: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let now = count();
            let before = exported.swap(now, Ordering::Relaxed);
            add(now.saturating_sub(before));
        });
        let periodic = export.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                periodic();
            }
        });
        Self { task, export }
    }

    /// Stops, exporting what came since the last export.
    fn finish(self) {
        self.task.abort();
        (self.export)();
    }
}
