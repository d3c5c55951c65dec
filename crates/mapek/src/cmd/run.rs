//! `mapek run`: the loop's workers, all in one process or one phase at a time.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use mapek_bus::JetStream;
use mapek_domain::{AnalyzeConfig, Analyzer, ExecuteConfig, Policy};
use mapek_loop::lease::{DEFAULT_TTL, run_partitioned, run_singleton};
use mapek_loop::plan::PlanStage;
use mapek_loop::{evaluate, execute};
use tokio::task::JoinSet;

use crate::Settings;
use crate::shutdown::Shutdown;

/// How many partitions the phase streams have (streams/: `{{partition(8,1)}}`).
pub const PARTITIONS: u32 = 8;

/// The phases `mapek run` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// Every phase
    All,
    /// Telemetry → symptoms
    Analyze,
    /// Symptoms → decisions
    Plan,
    /// Decisions → actions on the nodes, through the interlocks (one active copy at a time)
    Execute,
    /// Actions and symptoms → outcomes (one active copy at a time)
    Evaluate,
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

    /// This process's name in the partition leases [default: <host>-<pid>]
    #[arg(long, value_name = "NAME")]
    pub worker: Option<String>,

    /// Stop after this long (10m, 1h) [default: run until Ctrl-C]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

const RUN_HELP: &str = "\
Each phase's stream has 8 partitions (by node). Copies of a phase, in one process or many,
share them through leases in the MAPEK_LEASES key-value bucket: each takes its fair share,
per-node order is kept, and a copy that dies hands its partitions over within 6 s. A worker
rebuilds its state from the log before it takes new input, so nothing is doubled or lost.

Examples:
  mapek run                               every phase in this process
  mapek run --phase analyze &             two analyze workers sharing the partitions
  mapek run --phase analyze &
  mapek run --phase plan --policy policies/candidate.toml";

/// What the phase workers need.
pub struct Loop {
    /// The detectors' settings.
    pub analyze: AnalyzeConfig,
    /// The policy.
    pub policy: Policy,
    /// The interlocks and the actuator's settings.
    pub execute: ExecuteConfig,
    /// The name in the leases.
    pub worker: String,
}

impl Loop {
    /// Reads the policy and settings from flags, the config file and the defaults.
    pub fn from_settings(
        policy: Option<PathBuf>,
        worker: Option<String>,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let policy = match policy.or_else(|| settings.file.plan.policy.clone()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the policy {}", path.display()))?;
                Policy::parse(&text).with_context(|| format!("policy {}", path.display()))?
            }
            None => Policy::builtin(),
        };
        let worker = worker.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mapek".into());
            format!("{host}-{}", std::process::id())
        });
        Ok(Self {
            analyze: settings.file.analyze.clone(),
            execute: settings.file.execute.clone(),
            policy,
            worker,
        })
    }

    /// Starts the workers of `phase` on `tasks`; they stop when `shutdown` fires.
    pub fn spawn(
        &self,
        js: &JetStream,
        client: &async_nats::Client,
        phase: PhaseArg,
        shutdown: &Shutdown,
        tasks: &mut JoinSet<anyhow::Result<String>>,
    ) {
        if matches!(phase, PhaseArg::All | PhaseArg::Analyze) {
            let (js, config, worker, stop) = (
                js.clone(),
                self.analyze.clone(),
                self.worker.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                let stats = run_partitioned(
                    js,
                    "analyze",
                    PARTITIONS,
                    worker,
                    DEFAULT_TTL,
                    move |_| Analyzer::new(config.clone()),
                    stop.wait(),
                )
                .await?;
                Ok(format!(
                    "analyze: {} telemetry in, {} symptoms out ({} replayed at start)",
                    stats.processed, stats.emitted, stats.replayed
                ))
            });
        }
        if matches!(phase, PhaseArg::All | PhaseArg::Execute) {
            let (js2, client, config) = (js.clone(), client.clone(), self.execute.clone());
            spawn_singleton(
                tasks,
                js,
                "execute",
                self.worker.clone(),
                shutdown.clone(),
                move |stopped| {
                    execute::run(js2.clone(), client.clone(), config.clone(), async {
                        let _ = stopped.await;
                    })
                },
                |s: execute::ExecuteStats| {
                    format!(
                        "{} decisions, {} applied, {} failed, {} refused",
                        s.processed, s.applied, s.failed, s.refused
                    )
                },
            );
        }
        if matches!(phase, PhaseArg::All | PhaseArg::Evaluate) {
            let (js2, config) = (js.clone(), self.execute.clone());
            spawn_singleton(
                tasks,
                js,
                "evaluate",
                self.worker.clone(),
                shutdown.clone(),
                move |stopped| {
                    evaluate::run(js2.clone(), config.clone(), async {
                        let _ = stopped.await;
                    })
                },
                |s: evaluate::EvaluateStats| {
                    format!(
                        "{} results and {} symptoms in, {} resolved, {} not resolved",
                        s.results, s.symptoms, s.resolved, s.not_resolved
                    )
                },
            );
        }
        if matches!(phase, PhaseArg::All | PhaseArg::Plan) {
            let (js, policy, worker, stop) = (
                js.clone(),
                self.policy.clone(),
                self.worker.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                let stats = run_partitioned(
                    js,
                    "plan",
                    PARTITIONS,
                    worker,
                    DEFAULT_TTL,
                    move |_| PlanStage::without_knowledge(policy.clone()),
                    stop.wait(),
                )
                .await?;
                Ok(format!(
                    "plan: {} symptoms in, {} decisions out ({} replayed at start)",
                    stats.processed, stats.emitted, stats.replayed
                ))
            });
        }
    }
}

/// Runs `work` on `tasks` under the lease `name`, so one process at a time runs it, and
/// sums it up with `say` when it stops.
fn spawn_singleton<W, Fut, T>(
    tasks: &mut JoinSet<anyhow::Result<String>>,
    js: &JetStream,
    name: &'static str,
    worker: String,
    shutdown: Shutdown,
    work: W,
    say: fn(T) -> String,
) where
    W: Fn(tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, mapek_bus::BusError>> + Send + 'static,
    T: Send + 'static,
{
    let js = js.clone();
    tasks.spawn(async move {
        let stats = run_singleton(js, name, worker, DEFAULT_TTL, work, shutdown.wait()).await?;
        Ok(match stats {
            Some(s) => format!("{name}: {}", say(s)),
            None => format!("{name}: stood by (another process held the lease)"),
        })
    });
}

/// Runs `mapek run`.
pub async fn run(args: RunArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let workers = Loop::from_settings(args.policy, args.worker, settings)?;
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let client = mapek_bus::connect_client(&settings.nats_url).await?;
    let shutdown = Shutdown::on_ctrl_c(args.duration);
    let mut tasks = JoinSet::new();
    workers.spawn(&js, &client, args.phase, &shutdown, &mut tasks);
    eprintln!(
        "mapek run: {:?} as {} with policy {} ({}); Ctrl-C stops",
        args.phase,
        workers.worker,
        workers.policy.name(),
        &workers.policy.hash()[..12]
    );
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
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
