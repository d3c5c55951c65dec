//! The two projections `mapek run --phase project` runs, under leases so that one process at
//! a time writes each stream's part of a store (their offsets are the stores' own; two
//! writers would race on them), with their failures counted on `/metrics`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mapek_bus::{BusError, JetStream};
use mapek_domain::Phase;
use mapek_knowledge::{Backend, Part, ProjectionConfig, ProjectionStats, ReadModel, Redis};
use mapek_loop::metrics::{DEAD_LETTERS, PROJECTION_FAILURES, RETRIES};
use mapek_vectors::{IncidentIndex, ProjectStats};
use tokio::sync::OnceCell;

use super::Stores;
use super::workers::{Stop, Worker};
use crate::cmd::status::open_read_model_for;

/// The projection into the SQL read model (and Redis).
///
/// Into Postgres, which every process shares, the incidents' phases (symptoms to outcomes)
/// have one active copy, the others standing by, and the telemetry streams are shared out
/// among the processes running this phase, one lease per stream: a node's rows are written
/// from its one stream alone. Into SQLite, a file each process keeps for itself, one process
/// at a time projects the whole log, so that the file it writes holds all of it.
pub(super) async fn project_sql(worker: Worker, stores: Stores) -> anyhow::Result<String> {
    let postgres = Backend::of(&stores.database) == Backend::Postgres;
    let telemetry = match postgres {
        true => match worker.telemetry_streams().await {
            Some(streams) => streams,
            None => return Ok("the SQL read model: stopped before it started".into()),
        },
        false => Vec::new(),
    };
    // Each stream this process may project at once holds a connection while it writes.
    let writers = mapek_knowledge::PROJECTED.len() - 1 + telemetry.len().max(1);
    let stats = ProjectionStats::default();
    let counters = sql_counters(&stats);
    let model = Arc::new(SqlModel::new(&stores, u32::try_from(writers)?));
    let project = |js, part, stop| sql(js, model.clone(), part, stats.clone(), stop);
    let said = if postgres {
        shared_out(worker, telemetry, project).await
    } else {
        let whole = |js, stop| project(js, Part::Whole, stop);
        let said = worker.singleton("knowledge-sql", whole, |()| "projected".to_owned());
        said.await
    };
    counters.into_iter().for_each(CounterExporter::finish);
    Ok(format!(
        "the SQL read model: {} events written; {}",
        stats.total(|c| &c.applied),
        said?
    ))
}

/// The incidents' part under one lease and the telemetry streams under a lease each, as
/// [`project_sql`] runs them into Postgres; says what ran here.
async fn shared_out<P, Fut>(
    worker: Worker,
    telemetry: Vec<String>,
    project: P,
) -> anyhow::Result<String>
where
    P: Fn(JetStream, Part, Stop) -> Fut,
    Fut: Future<Output = Result<(), BusError>> + Send + 'static,
{
    let incidents = worker.clone().singleton(
        "knowledge-sql",
        |js, stop| project(js, Part::Incidents, stop),
        |()| "symptoms to outcomes projected".to_owned(),
    );
    // A lease per stream, named after the projection's consumer on it:
    // `knowledge-sql-monitor.p1` for the second (`MAPEK_MONITOR_1`).
    let lease = ProjectionConfig::default()
        .durable(Phase::Monitor)
        .expect("the live projection's consumers are durable");
    let pieces = worker.shared(&lease, telemetry.len(), |js, i, stop| {
        project(js, Part::Telemetry(telemetry[i].clone()), stop)
    });
    let (incidents, pieces) = tokio::join!(incidents, pieces);
    Ok(format!(
        "{}; {lease}: {} of {} telemetry streams projected here",
        incidents?,
        pieces?,
        telemetry.len()
    ))
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

/// The read model and Redis, opened by the first projection that needs them and shared by
/// the others of the process (embedded SQLite takes one writer at a time).
struct SqlModel {
    database: String,
    /// How many streams the process may project at once.
    writers: u32,
    redis: Option<(String, String)>,
    opened: OnceCell<(ReadModel, Option<Redis>)>,
}

impl SqlModel {
    fn new(stores: &Stores, writers: u32) -> Self {
        Self {
            database: stores.database.clone(),
            writers,
            redis: stores.redis.clone(),
            opened: OnceCell::new(),
        }
    }

    /// The read model and Redis, opened now if no projection has yet; a failure is left for
    /// the next try.
    async fn open(&self) -> anyhow::Result<&(ReadModel, Option<Redis>)> {
        self.opened
            .get_or_try_init(|| async {
                let model = open_read_model_for(&self.database, self.writers).await?;
                let redis = match &self.redis {
                    Some((url, prefix)) => Some(Redis::connect_with_prefix(url, prefix).await?),
                    None => None,
                };
                Ok((model, redis))
            })
            .await
    }
}

/// Projects `part` of the log into the read model (and Redis), counting into `stats`, until
/// `stop`.
async fn sql(
    js: JetStream,
    model: Arc<SqlModel>,
    part: Part,
    stats: ProjectionStats,
    stop: Stop,
) -> Result<(), BusError> {
    let failed = |e: &dyn std::fmt::Display| BusError::Consumer {
        stream: "the SQL read model".into(),
        detail: e.to_string(),
    };
    let (read_model, redis) = model.open().await.map_err(|e| failed(&format!("{e:#}")))?;
    let config = ProjectionConfig {
        part,
        ..ProjectionConfig::default()
    };
    mapek_knowledge::project_with(js, read_model.clone(), redis.clone(), config, stats, stop)
        .await
        .map_err(|e| failed(&e))
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
