//! `mapek run`: the loop's workers, all in one process or one phase at a time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use mapek_audit::witness;
use mapek_audit::{SigningKey, VerifyingKey};
use mapek_bus::JetStream;
use mapek_domain::plan::NoKnowledge;
use mapek_domain::{
    AnalyzeConfig, Analyzer, Decision, ExecuteConfig, KnowledgeView, Policy, ShadowDecision,
};
use mapek_knowledge::Redis;
use mapek_loop::lease::{DEFAULT_TTL, run_partitioned, run_singleton};
use mapek_loop::metrics::{DEAD_LETTERS, PROJECTION_FAILURES, RETRIES};
use mapek_loop::plan::{Decided, PlanStage};
use mapek_loop::retry::until_ok;
use mapek_loop::{evaluate, execute};
use mapek_vectors::{IncidentIndex, IndexKnowledge};
use tokio::task::JoinSet;

use crate::Settings;
use crate::cmd::replay::read_policy;
use crate::cmd::status::{StoreArgs, open_read_model};
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
    /// Decisions → actions on the nodes, through the interlocks (one active copy at a time;
    /// with Redis, every copy is active and they share the partitions)
    Execute,
    /// Actions and symptoms → outcomes (one active copy at a time)
    Evaluate,
    /// The log → the SQL read model and the incident index (one active copy of each)
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

/// What the phase workers need.
pub struct Loop {
    /// The detectors' settings.
    pub analyze: AnalyzeConfig,
    /// The policy; each plan worker records its text in MAPEK_CONFIG before deciding.
    pub policy: Policy,
    /// Candidate policies, each deciding every symptom beside the live policy, on the shadow
    /// subjects (ADR 0020).
    pub shadows: Vec<Policy>,
    /// The interlocks and the actuator's settings.
    pub execute: ExecuteConfig,
    /// The name in the leases.
    pub worker: String,
    /// Signs the decisions, if set.
    pub signer: Option<Arc<SigningKey>>,
    /// Checks the decisions before acting, if set.
    pub verifier: Option<VerifyingKey>,
    /// Signs the executor's results, if set: the result key, not the decision key (ADR 0019).
    pub result_signer: Option<Arc<SigningKey>>,
    /// The knowledge stores; without them the planner decides by policy alone and nothing
    /// is projected.
    pub stores: Option<Stores>,
    /// The Redis executors share leases and their lock through; without it one executor
    /// at a time is active.
    pub executors_share: Option<Redis>,
}

impl Loop {
    /// Reads the policy and settings from flags, the config file and the defaults.
    pub fn from_settings(
        policy: Option<PathBuf>,
        worker: Option<String>,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let policy = match policy.or_else(|| settings.file.plan.policy.clone()) {
            Some(path) => read_policy(&path)?,
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
            shadows: Vec::new(),
            worker,
            signer: None,
            verifier: None,
            result_signer: None,
            stores: None,
            executors_share: None,
        })
    }

    /// Decides with each candidate policy at `paths` too, or at `plan.shadow_policies` of the
    /// config file when `paths` is empty ([`Loop::with_shadow`]).
    pub fn with_shadows(mut self, paths: &[PathBuf], settings: &Settings) -> anyhow::Result<Self> {
        let paths = match paths {
            [] => settings.file.plan.shadow_policies.as_slice(),
            given => given,
        };
        for path in paths {
            self = self
                .with_shadow(read_policy(path)?)
                .with_context(|| format!("shadow policy {}", path.display()))?;
        }
        Ok(self)
    }

    /// Decides with `candidate` too, publishing shadow decisions (ADR 0020). A candidate's
    /// name names its consumers and leases (`shadow-<name>-p3`), so it must differ from the
    /// live policy's and the other candidates', and have no '.'.
    pub fn with_shadow(mut self, candidate: Policy) -> anyhow::Result<Self> {
        let name = candidate.name();
        let taken = std::iter::once(&self.policy)
            .chain(&self.shadows)
            .any(|p| p.name() == name);
        if taken {
            anyhow::bail!(
                "its name {name:?} is the live policy's or another candidate's, and names the \
                 shadow's decisions and consumers; change `name` in the file"
            );
        }
        if name.contains('.') {
            anyhow::bail!(
                "its name {name:?} has a '.', which a consumer's name cannot have; change \
                 `name` in the file"
            );
        }
        self.shadows.push(candidate);
        Ok(self)
    }

    /// Plans with the incident index of `stores` and projects into them.
    pub fn with_stores(mut self, stores: Stores) -> Self {
        self.stores = Some(stores);
        self
    }

    /// Signs decisions with the secret key at `signing`, and has the executor check them with
    /// the public key at `verify`; either may be absent.
    pub fn with_keys(
        mut self,
        signing: Option<&Path>,
        verify: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if let Some(path) = signing {
            let key = SigningKey::load(path).context("cannot load the signing key")?;
            self.signer = Some(Arc::new(key));
        }
        if let Some(path) = verify {
            self.verifier =
                Some(VerifyingKey::load(path).context("cannot load the verifying key")?);
        }
        Ok(self)
    }

    /// Has the executor sign its results with the secret result key at `path`, if given.
    pub fn with_result_key(mut self, path: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(path) = path {
            let key = SigningKey::load(path).context("cannot load the result signing key")?;
            self.result_signer = Some(Arc::new(key));
        }
        Ok(self)
    }

    /// The keys the executor holds.
    fn executor_keys(&self) -> execute::ExecutorKeys {
        execute::ExecutorKeys {
            verify: self.verifier.clone(),
            sign: self.result_signer.clone(),
        }
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
        let runs = |p: PhaseArg| matches!(phase, PhaseArg::All) || phase == p;
        if runs(PhaseArg::Analyze) {
            self.spawn_analyze(js, shutdown, tasks);
        }
        if runs(PhaseArg::Execute) {
            self.spawn_execute(js, client, shutdown, tasks);
        }
        if runs(PhaseArg::Evaluate) {
            self.spawn_evaluate(js, shutdown, tasks);
        }
        if runs(PhaseArg::Plan) {
            let signer = self.signer.clone();
            self.spawn_plan::<Decision>("plan", &self.policy, signer, shutdown, js, tasks);
            for candidate in &self.shadows {
                let name = ShadowDecision::workers(candidate.name());
                self.spawn_plan::<ShadowDecision>(&name, candidate, None, shutdown, js, tasks);
            }
            self.spawn_witness(js, shutdown, tasks);
        }
        if let (true, Some(stores)) = (runs(PhaseArg::Project), &self.stores) {
            self.spawn_projections(js, stores, shutdown, tasks);
        }
    }

    /// The analyze workers, sharing the partitions with other processes.
    fn spawn_analyze(
        &self,
        js: &JetStream,
        shutdown: &Shutdown,
        tasks: &mut JoinSet<anyhow::Result<String>>,
    ) {
        let (js, config, worker, stop) = (
            js.clone(),
            self.analyze.clone(),
            self.worker.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            // Replay needs the settings the symptoms were found with.
            let record = || mapek_bus::config_store::record_analyze(&js, &config);
            let stopped = std::pin::pin!(stop.clone().wait());
            if until_ok("analyze", "record config", record, stopped)
                .await
                .is_none()
            {
                return Ok("analyze: stopped before it started".to_owned());
            }
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

    /// The plan workers named `name` deciding with `policy` and publishing `D`, sharing the
    /// partitions with other processes: the live planners (`plan`), or a candidate's
    /// (`shadow-<policy>`).
    fn spawn_plan<D: Decided>(
        &self,
        name: &str,
        policy: &Policy,
        signer: Option<Arc<SigningKey>>,
        shutdown: &Shutdown,
        js: &JetStream,
        tasks: &mut JoinSet<anyhow::Result<String>>,
    ) {
        let (js, policy, worker, stop) = (
            js.clone(),
            policy.clone(),
            self.worker.clone(),
            shutdown.clone(),
        );
        let name = name.to_owned();
        let index = self.stores.as_ref().map(|s| s.index.clone());
        tasks.spawn(async move {
            let stats = run_partitioned(
                js,
                &name,
                PARTITIONS,
                worker,
                DEFAULT_TTL,
                move |_| {
                    let knowledge: Box<dyn KnowledgeView + Send> = match &index {
                        Some(index) => Box::new(IndexKnowledge::new(index.clone())),
                        None => Box::new(NoKnowledge),
                    };
                    let stage = PlanStage::<D>::publishing(policy.clone(), knowledge);
                    match &signer {
                        Some(key) => stage.signed_by(key.clone()),
                        None => stage,
                    }
                },
                stop.wait(),
            )
            .await?;
            Ok(format!(
                "{name}: {} symptoms in, {} decisions out ({} replayed at start)",
                stats.processed, stats.emitted, stats.replayed
            ))
        });
    }

    /// The chain witness (ADR 0016), with the plan phase when it signs decisions: one active
    /// copy, the others standing by.
    fn spawn_witness(
        &self,
        js: &JetStream,
        shutdown: &Shutdown,
        tasks: &mut JoinSet<anyhow::Result<String>>,
    ) {
        let Some(key) = self.signer.clone() else {
            return;
        };
        let worker_js = js.clone();
        spawn_singleton(
            tasks,
            js,
            "witness",
            self.worker.clone(),
            shutdown.clone(),
            move |stopped| {
                witness::run(
                    worker_js.clone(),
                    key.clone(),
                    witness::WitnessConfig::default(),
                    mapek_bus::until_stopped(stopped),
                )
            },
            |s: witness::WitnessStats| {
                format!(
                    "{} decisions read, {} chain heads signed",
                    s.decisions, s.heads_signed
                )
            },
        );
    }

    /// The executor: every copy active, sharing the work through Redis when executors
    /// share it, else one active copy and the others standing by.
    fn spawn_execute(
        &self,
        js: &JetStream,
        client: &async_nats::Client,
        shutdown: &Shutdown,
        tasks: &mut JoinSet<anyhow::Result<String>>,
    ) {
        let Some(redis) = &self.executors_share else {
            let (worker_js, client, config, keys) = (
                js.clone(),
                client.clone(),
                self.execute.clone(),
                self.executor_keys(),
            );
            spawn_singleton(
                tasks,
                js,
                "execute",
                self.worker.clone(),
                shutdown.clone(),
                move |stopped| {
                    execute::run_audited(
                        worker_js.clone(),
                        client.clone(),
                        config.clone(),
                        keys.clone(),
                        mapek_bus::until_stopped(stopped),
                    )
                },
                |s: execute::ExecuteStats| {
                    format!(
                        "{} decisions, {} applied, {} failed, {} refused",
                        s.processed, s.applied, s.failed, s.refused
                    )
                },
            );
            return;
        };
        let (js, client, config, keys, stop) = (
            js.clone(),
            client.clone(),
            self.execute.clone(),
            self.executor_keys(),
            shutdown.clone(),
        );
        let shared = execute::Shared::new(redis.clone(), self.worker.clone())
            .partitions(PARTITIONS)
            .lease_ttl(DEFAULT_TTL);
        tasks.spawn(async move {
            let s = execute::run_shared(js, client, config, keys, shared, stop.wait()).await?;
            Ok(format!(
                "execute (sharing through Redis): {} decisions, {} applied, {} failed, {} \
                 refused, {} waited for another executor",
                s.processed, s.applied, s.failed, s.refused, s.busy_elsewhere
            ))
        });
    }

    /// The evaluator: one active copy, the others standing by.
    fn spawn_evaluate(
        &self,
        js: &JetStream,
        shutdown: &Shutdown,
        tasks: &mut JoinSet<anyhow::Result<String>>,
    ) {
        let (worker_js, config) = (js.clone(), self.execute.clone());
        spawn_singleton(
            tasks,
            js,
            "evaluate",
            self.worker.clone(),
            shutdown.clone(),
            move |stopped| {
                evaluate::run(
                    worker_js.clone(),
                    config.clone(),
                    mapek_bus::until_stopped(stopped),
                )
            },
            |s: evaluate::EvaluateStats| {
                format!(
                    "{} results and {} symptoms in, {} resolved, {} not resolved",
                    s.results, s.symptoms, s.resolved, s.not_resolved
                )
            },
        );
    }

    /// The two projections, each under a lease so one process at a time writes a store
    /// (their offsets are the stores' own; two writers would race on them).
    fn spawn_projections(
        &self,
        js: &JetStream,
        stores: &Stores,
        shutdown: &Shutdown,
        tasks: &mut JoinSet<anyhow::Result<String>>,
    ) {
        let (worker_js, database, redis) =
            (js.clone(), stores.database.clone(), stores.redis.clone());
        spawn_singleton(
            tasks,
            js,
            "knowledge-sql",
            self.worker.clone(),
            shutdown.clone(),
            move |stopped| {
                let (js, database, redis) = (worker_js.clone(), database.clone(), redis.clone());
                async move {
                    let failed = |e: &dyn std::fmt::Display| mapek_bus::BusError::Consumer {
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
                    // The projection counts the writes that failed and the messages its store
                    // kept refusing; /metrics shows them.
                    let stats = mapek_knowledge::ProjectionStats::default();
                    let (watched, refused, read) = (stats.clone(), stats.clone(), stats.clone());
                    let exporter = CounterExporter::start(projection_failures("sql"), move || {
                        watched.total(|c| &c.store_failures)
                    });
                    let log = CounterExporter::start(
                        |n| {
                            RETRIES
                                .with_label_values(&["knowledge-sql", "read the log"])
                                .inc_by(n)
                        },
                        move || read.total(|c| &c.log_failures),
                    );
                    let dead = CounterExporter::start(
                        |n| DEAD_LETTERS.with_label_values(&["knowledge-sql"]).inc_by(n),
                        move || refused.total(|c| &c.dead_lettered),
                    );
                    let done = mapek_knowledge::project_with(
                        js,
                        model,
                        redis,
                        mapek_knowledge::ProjectionConfig::default(),
                        stats.clone(),
                        mapek_bus::until_stopped(stopped),
                    )
                    .await;
                    exporter.finish();
                    dead.finish();
                    log.finish();
                    done.map(|()| stats).map_err(|e| failed(&e))
                }
            },
            |s: mapek_knowledge::ProjectionStats| {
                format!("{} events into the read model", s.total(|c| &c.applied))
            },
        );
        let (worker_js, index) = (js.clone(), stores.index.clone());
        spawn_singleton(
            tasks,
            js,
            "knowledge-vectors",
            self.worker.clone(),
            shutdown.clone(),
            move |stopped| {
                let (js, index) = (worker_js.clone(), index.clone());
                async move {
                    // The projection counts the index's failed reads and writes (it waits
                    // them out); /metrics shows them.
                    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let watched = failures.clone();
                    let exporter =
                        CounterExporter::start(projection_failures("incidents"), move || {
                            watched.load(std::sync::atomic::Ordering::Relaxed)
                        });
                    let done = mapek_vectors::project_with(
                        js,
                        index,
                        failures,
                        mapek_bus::until_stopped(stopped),
                    )
                    .await;
                    exporter.finish();
                    done.map_err(|e| mapek_bus::BusError::Consumer {
                        stream: "the incident index".into(),
                        detail: e.to_string(),
                    })
                }
            },
            |s: mapek_vectors::ProjectStats| {
                format!("{} events, {} incident points written", s.events, s.written)
            },
        );
    }
}

/// Adds a projection's failed store reads and writes, as its counter grows, to
/// `mapek_projection_failures_total{projection}` every 2 s, and once more when it finishes.
struct CounterExporter {
    task: tokio::task::JoinHandle<()>,
    export: Arc<dyn Fn() + Send + Sync>,
}

/// Adds to the projection failures of `projection`.
fn projection_failures(projection: &'static str) -> impl Fn(u64) + Send + Sync + 'static {
    move |n| {
        PROJECTION_FAILURES
            .with_label_values(&[projection])
            .inc_by(n)
    }
}

impl CounterExporter {
    /// Starts passing to `add` what `count` (a running total) has added, every 2 s.
    fn start(
        add: impl Fn(u64) + Send + Sync + 'static,
        count: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        let exported = std::sync::atomic::AtomicU64::new(0);
        let export: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let now = count();
            let before = exported.swap(now, std::sync::atomic::Ordering::Relaxed);
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
    let mut workers = Loop::from_settings(args.policy, args.worker, settings)?
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
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let client = mapek_bus::connect_client(&settings.nats_url).await?;
    let shutdown = Shutdown::on_ctrl_c(args.duration);
    let _metrics = serve_metrics(&args.metrics_addr).await?;
    let spans = crate::otel::install()?;
    let mut tasks = JoinSet::new();
    workers.spawn(&js, &client, args.phase, &shutdown, &mut tasks);
    eprintln!(
        "mapek run: {:?} as {} with policy {} ({}, blast radius judged {}); Ctrl-C stops",
        args.phase,
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
    if let Some(spans) = spans {
        spans.shutdown().await;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
