//! `mapek run`: the loop's workers, all in one process or one phase at a time.
//!
//! # Layout
//! - this module: the flags, where the knowledge stores are ([`Stores`]), and [`run`].
//! - [`workers`]: [`Loop`], what the workers need, and one function per phase that starts
//!   its workers.
//! - `project`: the two projections and their counters on `/metrics`.

mod project;
pub mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use mapek_knowledge::Redis;
use mapek_vectors::IncidentIndex;
use tokio::task::JoinSet;

pub use workers::Loop;

use crate::Settings;
use crate::cmd::status::StoreArgs;
use crate::shutdown::Shutdown;

/// The phases `mapek run` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// Every phase
    All,
    /// Telemetry → symptoms
    Analyze,
    /// Symptoms → decisions
    Plan,
    /// Decisions → actions on the nodes, through the interlocks (one active copy at a time;
    /// with Redis, every copy is active and they share the partitions)
    Execute,
    /// Actions and symptoms → outcomes (one active copy at a time)
    Evaluate,
    /// The log → the SQL read model and the incident index (one active copy of each; copies
    /// writing one Postgres read model share its telemetry streams)
    Project,
}

/// `mapek run`
#[derive(Debug, Args)]
#[command(after_long_help = RUN_HELP)]
pub struct RunArgs {
    /// Which phase to run
    #[arg(long, value_enum, default_value = "all")]
    pub phase: PhaseArg,

    /// The policy file [default: the built-in policies/default.toml, or plan.policy in the
    /// config file]
    #[arg(long, env = "MAPEK_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Also decide every symptom with this candidate policy, publishing its decisions on
    /// mapek.shadow.<node> where nothing executes them (`mapek shadow diff` compares); may be
    /// given more than once, and runs wherever the plan phase runs [default: plan.shadow_policies
    /// in the config file, or none]
    #[arg(long = "shadow-policy", value_name = "FILE")]
    pub shadow_policies: Vec<PathBuf>,

    /// This process's name in the partition leases [default: <host>-<pid>]
    #[arg(long, value_name = "NAME")]
    pub worker: Option<String>,

    /// Stop after this long (10m, 1h) [default: run until Ctrl-C]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Where to serve Prometheus metrics (GET /metrics); "off" serves none. Port 0 picks a
    /// free port. A busy address is a warning, not an error, so several workers can share a
    /// host with the default
    #[arg(
        long,
        env = "MAPEK_METRICS_ADDR",
        default_value = "127.0.0.1:9464",
        value_name = "ADDR"
    )]
    pub metrics_addr: String,

    /// Sign every decision with this ML-DSA-65 secret key (`mapek audit keygen` makes one)
    /// [default: unsigned]
    #[arg(long, env = "MAPEK_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Act only on decisions signed by the holder of this public key and linked to the
    /// decision before them [default: no check]
    #[arg(long, env = "MAPEK_VERIFY_KEY", value_name = "FILE")]
    pub verify_key: Option<PathBuf>,

    /// Sign every action result with this ML-DSA-65 secret key, the executor's own (`mapek
    /// audit keygen --for results` makes one; `mapek audit verify --result-key` checks them)
    /// [default: unsigned]
    #[arg(long, env = "MAPEK_RESULT_SIGNING_KEY", value_name = "FILE")]
    pub result_signing_key: Option<PathBuf>,

    /// A Qdrant server (gRPC, http://host:6334) for the incident index [default: qdrant-edge
    /// under the data directory, which only one process may open: run plan and project in
    /// the same process then]
    #[arg(long, env = "QDRANT_URL", value_name = "URL")]
    pub qdrant_url: Option<String>,

    #[command(flatten)]
    pub stores: StoreArgs,
}

/// Where the knowledge lives, for the workers that use it.
#[derive(Clone)]
pub struct Stores {
    /// The SQL read model: a URL or a SQLite path.
    pub database: String,
    /// Redis and the key prefix, for hot node health.
    pub redis: Option<(String, String)>,
    /// The incident index the planner learns from and the projection fills.
    pub index: Arc<dyn IncidentIndex>,
}

impl Stores {
    /// Opens the incident index (a Qdrant server at `qdrant_url`, else qdrant-edge under
    /// the data directory) and notes where the read model and Redis are.
    pub async fn open(
        stores: &StoreArgs,
        qdrant_url: Option<&str>,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let qdrant_url = qdrant_url
            .map(str::to_owned)
            .or_else(|| settings.file.knowledge.qdrant_url.clone());
        let data_dir = stores
            .data_dir
            .clone()
            .or_else(|| settings.file.knowledge.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("mapek-data"));
        let index = mapek_vectors::open(qdrant_url.as_deref(), &data_dir).await?;
        Ok(Self {
            database: stores.database(settings),
            redis: stores
                .redis(settings)
                .map(|url| (url, stores.redis_prefix.clone())),
            index,
        })
    }
}

const RUN_HELP: &str = "\
Each phase's stream has 8 partitions (by node). Copies of a phase, in one process or many,
share them through leases in the MAPEK_LEASES key-value bucket: each takes its fair share,
per-node order is kept, and a copy that dies hands its partitions over within 6 s. A worker
rebuilds its state from the log before it takes new input, so nothing is doubled or lost.

Executors are the exception: their interlocks (rate limit, blast radius) are global, so
without Redis one executor is active and the others stand by. With REDIS_URL every executor
is active: they share the partitions, lease each node in Redis while its command is out, and
judge one decision at a time under a Redis lock after folding every result, so together
they refuse what one executor would have refused.

Spans of each incident go to an OpenTelemetry collector over OTLP/HTTP when
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) names one; OTEL_SERVICE_NAME
names the service [default: mapek], and OTEL_SDK_DISABLED=true turns the export off.

Examples:
  mapek run                               every phase in this process
  mapek run --phase analyze &             two analyze workers sharing the partitions
  mapek run --phase analyze &
  mapek run --phase plan --policy policies/candidate.toml
  mapek run --shadow-policy policies/cautious.toml   decide with a candidate too, never act on it
  REDIS_URL=redis://127.0.0.1:6379 mapek run --phase execute &   two active executors
  REDIS_URL=redis://127.0.0.1:6379 mapek run --phase execute &";

/// Serves `/metrics` on `addr` unless it is "off"; the task serves until dropped. A busy
/// address only warns: the loop matters more than its metrics.
pub async fn serve_metrics(addr: &str) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if addr == "off" {
        return Ok(None);
    }
    let parsed: std::net::SocketAddr = addr.parse().with_context(|| {
        format!("--metrics-addr {addr:?} is not an address like 127.0.0.1:9464")
    })?;
    match mapek_loop::metrics::serve(parsed).await {
        Ok((bound, task)) => {
            eprintln!("mapek: metrics on http://{bound}/metrics");
            Ok(Some(task))
        }
        Err(e) => {
            eprintln!(
                "warning: cannot serve metrics on {addr}: {e}; set --metrics-addr (port 0 for any)"
            );
            Ok(None)
        }
    }
}

/// Runs `mapek run`.
pub async fn run(args: RunArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let workers = workers(&args, settings).await?;
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let client = mapek_bus::connect_client(&settings.nats_url).await?;
    let shutdown = Shutdown::on_ctrl_c(args.duration);
    let _metrics = serve_metrics(&args.metrics_addr).await?;
    let spans = crate::otel::install()?;
    let mut tasks = JoinSet::new();
    workers.spawn(&js, &client, args.phase, &shutdown, &mut tasks);
    announce(args.phase, &workers);
    let failed = wait_for(tasks).await;
    if let Some(spans) = spans {
        spans.shutdown().await;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The workers `args` asks for, with the stores and the Redis their phases need.
async fn workers(args: &RunArgs, settings: &Settings) -> anyhow::Result<Loop> {
    let mut workers = Loop::from_settings(args.policy.clone(), args.worker.clone(), settings)?
        .with_shadows(&args.shadow_policies, settings)?
        .with_keys(args.signing_key.as_deref(), args.verify_key.as_deref())?
        .with_result_key(args.result_signing_key.as_deref())?;
    // Only plan (which learns from the index) and the projections need the stores.
    if matches!(
        args.phase,
        PhaseArg::All | PhaseArg::Plan | PhaseArg::Project
    ) {
        let stores = Stores::open(&args.stores, args.qdrant_url.as_deref(), settings).await?;
        workers = workers.with_stores(stores);
    }
    // With Redis, executors share leases and every copy is active.
    if let (true, Some(url)) = (
        matches!(args.phase, PhaseArg::All | PhaseArg::Execute),
        args.stores.redis(settings),
    ) {
        let redis = Redis::connect_with_prefix(&url, &args.stores.redis_prefix).await?;
        workers.executors_share = Some(redis);
    }
    Ok(workers)
}

/// Says what runs, as whom, with which policies.
fn announce(phase: PhaseArg, workers: &Loop) {
    eprintln!(
        "mapek run: {phase:?} as {} with policy {} ({}, blast radius judged {}); Ctrl-C stops",
        workers.worker,
        workers.policy.name(),
        &workers.policy.hash()[..12],
        match workers.policy.file().blast_radius.scope {
            mapek_domain::plan::Scope::Mesh => "over the mesh by the executor",
            mapek_domain::plan::Scope::Partition => "per plan partition by the planner",
        }
    );
    for candidate in &workers.shadows {
        eprintln!(
            "mapek run: shadow policy {} ({}) decides beside it on mapek.shadow.<node>, never acted on",
            candidate.name(),
            &candidate.hash()[..12]
        );
    }
}

/// Waits for every worker to stop, printing what each did; whether any failed.
async fn wait_for(mut tasks: workers::Tasks) -> bool {
    let mut failed = false;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(summary)) => eprintln!("{summary}"),
            Ok(Err(e)) => {
                eprintln!("error: {e:#}");
                failed = true;
            }
            Err(e) => {
                eprintln!("error: a worker panicked: {e}");
                failed = true;
            }
        }
    }
    failed
}
