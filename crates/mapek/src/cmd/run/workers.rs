//! [`Loop`]: what the phase workers need, and one function per phase that starts its workers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures::future::BoxFuture;
use mapek_audit::witness;
use mapek_audit::{SigningKey, VerifyingKey};
use mapek_bus::layout;
use mapek_bus::{BusError, JetStream};
use mapek_domain::plan::NoKnowledge;
use mapek_domain::{
    AnalyzeConfig, Analyzer, Decision, ExecuteConfig, KnowledgeView, Phase, Policy, ShadowDecision,
};
use mapek_knowledge::Redis;
use mapek_loop::lease::{DEFAULT_TTL, Sharing, run_partitioned, run_singleton, share_partitions};
use mapek_loop::plan::{Decided, PlanStage};
use mapek_loop::retry::until_ok;
use mapek_loop::{Stage, StageStats, evaluate, execute};
use mapek_vectors::IndexKnowledge;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::project::{project_sql, project_vectors};
use super::{PhaseArg, Stores};
use crate::Settings;
use crate::cmd::replay::read_policy;
use crate::shutdown::Shutdown;

/// The workers' tasks; each sums up what it did when it stops.
pub type Tasks = JoinSet<anyhow::Result<String>>;

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

    /// Starts the workers of `phase` on `tasks`; they stop when `shutdown` fires.
    pub fn spawn(
        &self,
        js: &JetStream,
        client: &async_nats::Client,
        phase: PhaseArg,
        shutdown: &Shutdown,
        tasks: &mut Tasks,
    ) {
        let runs = |p: PhaseArg| matches!(phase, PhaseArg::All) || phase == p;
        let worker = Worker {
            js: js.clone(),
            name: self.worker.clone(),
            shutdown: shutdown.clone(),
        };
        if runs(PhaseArg::Analyze) {
            tasks.spawn(analyze(worker.clone(), self.analyze.clone()));
        }
        if runs(PhaseArg::Execute) {
            self.spawn_execute(&worker, client, tasks);
        }
        if runs(PhaseArg::Evaluate) {
            tasks.spawn(evaluate(worker.clone(), self.execute.clone()));
        }
        if runs(PhaseArg::Plan) {
            self.spawn_plan::<Decision>(&worker, "plan", &self.policy, self.signer.clone(), tasks);
            for candidate in &self.shadows {
                let name = ShadowDecision::workers(candidate.name());
                self.spawn_plan::<ShadowDecision>(&worker, &name, candidate, None, tasks);
            }
            if let Some(key) = &self.signer {
                tasks.spawn(witness(worker.clone(), key.clone()));
            }
        }
        if let (true, Some(stores)) = (runs(PhaseArg::Project), &self.stores) {
            tasks.spawn(project_sql(worker.clone(), stores.clone()));
            tasks.spawn(project_vectors(worker.clone(), stores.index.clone()));
        }
    }

    /// Starts the plan workers named `name` deciding with `policy` and publishing `D`: the
    /// live planners (`plan`), or a candidate's (`shadow-<policy>`).
    fn spawn_plan<D: Decided>(
        &self,
        worker: &Worker,
        name: &str,
        policy: &Policy,
        signer: Option<Arc<SigningKey>>,
        tasks: &mut Tasks,
    ) {
        let index = self.stores.as_ref().map(|s| s.index.clone());
        let policy = policy.clone();
        let make = move |_| {
            let knowledge: Box<dyn KnowledgeView + Send> = match &index {
                Some(index) => Box::new(IndexKnowledge::new(index.clone())),
                None => Box::new(NoKnowledge),
            };
            let stage = PlanStage::<D>::publishing(policy.clone(), knowledge);
            match &signer {
                Some(key) => stage.signed_by(key.clone()),
                None => stage,
            }
        };
        tasks.spawn(plan(worker.clone(), name.to_owned(), make));
    }

    /// Starts the executor with the keys and the Redis it is given.
    fn spawn_execute(&self, worker: &Worker, client: &async_nats::Client, tasks: &mut Tasks) {
        let executor = Executor {
            client: client.clone(),
            config: self.execute.clone(),
            keys: execute::ExecutorKeys {
                verify: self.verifier.clone(),
                sign: self.result_signer.clone(),
            },
        };
        match &self.executors_share {
            None => tasks.spawn(executor.alone(worker.clone())),
            Some(redis) => tasks.spawn(executor.sharing(worker.clone(), redis.clone())),
        };
    }
}

/// The analyze workers, sharing the partitions with other processes, once the settings they
/// find symptoms with are recorded (replay needs them).
async fn analyze(worker: Worker, config: AnalyzeConfig) -> anyhow::Result<String> {
    let record = || mapek_bus::config_store::record_analyze(&worker.js, &config);
    let stopped = std::pin::pin!(worker.shutdown.clone().wait());
    if until_ok("analyze", "record config", record, stopped)
        .await
        .is_none()
    {
        return Ok("analyze: stopped before it started".to_owned());
    }
    let make = |_| Analyzer::new(config.clone());
    let stats = worker.partitioned("analyze", Phase::Monitor, make).await?;
    Ok(format!(
        "analyze: {} telemetry in, {} symptoms out ({} replayed at start)",
        stats.processed, stats.emitted, stats.replayed
    ))
}

/// The plan workers named `name`, with the planners `make` makes, sharing the partitions
/// with other processes.
async fn plan<S: Stage + Send + 'static>(
    worker: Worker,
    name: String,
    make: impl Fn(u32) -> S,
) -> anyhow::Result<String> {
    let stats = worker.partitioned(&name, Phase::Analyze, make).await?;
    Ok(format!(
        "{name}: {} symptoms in, {} decisions out ({} replayed at start)",
        stats.processed, stats.emitted, stats.replayed
    ))
}

/// The chain witness (ADR 0016), with the plan phase when it signs decisions: one active
/// copy, the others standing by.
async fn witness(worker: Worker, key: Arc<SigningKey>) -> anyhow::Result<String> {
    let work = |js, stop| witness::run(js, key.clone(), witness::WitnessConfig::default(), stop);
    let say = |s: witness::WitnessStats| {
        format!(
            "{} decisions read, {} chain heads signed",
            s.decisions, s.heads_signed
        )
    };
    worker.singleton("witness", work, say).await
}

/// The evaluator: one active copy, the others standing by.
async fn evaluate(worker: Worker, config: ExecuteConfig) -> anyhow::Result<String> {
    let work = |js, stop| evaluate::run(js, config.clone(), stop);
    let say = |s: evaluate::EvaluateStats| {
        format!(
            "{} results and {} symptoms in, {} resolved, {} not resolved",
            s.results, s.symptoms, s.resolved, s.not_resolved
        )
    };
    worker.singleton("evaluate", work, say).await
}

/// What an executor is started with.
struct Executor {
    /// The connection commands go out on.
    client: async_nats::Client,
    config: ExecuteConfig,
    keys: execute::ExecutorKeys,
}

impl Executor {
    /// One active copy, the others standing by.
    async fn alone(self, worker: Worker) -> anyhow::Result<String> {
        let work = |js, stop| {
            let keys = self.keys.clone();
            execute::run_audited(js, self.client.clone(), self.config.clone(), keys, stop)
        };
        let say = |s: execute::ExecuteStats| {
            format!(
                "{} decisions, {} applied, {} failed, {} refused",
                s.processed, s.applied, s.failed, s.refused
            )
        };
        worker.singleton("execute", work, say).await
    }

    /// Every copy active, sharing the partitions and the interlocks through `redis`.
    async fn sharing(self, worker: Worker, redis: Redis) -> anyhow::Result<String> {
        let run = |partitions, stop| {
            let shared = execute::Shared::new(redis.clone(), worker.name.clone())
                .partitions(partitions)
                .lease_ttl(DEFAULT_TTL);
            let (client, config, keys) =
                (self.client.clone(), self.config.clone(), self.keys.clone());
            execute::run_shared(worker.js.clone(), client, config, keys, shared, stop)
        };
        let runs = worker
            .following_partitions("execute", Phase::Plan, run)
            .await?;
        let mut s = execute::ExecuteStats::default();
        runs.iter().for_each(|run| s.add(run));
        Ok(format!(
            "execute (sharing through Redis): {} decisions, {} applied, {} failed, {} \
             refused, {} waited for another executor",
            s.processed, s.applied, s.failed, s.refused, s.busy_elsewhere
        ))
    }
}

/// This process as a worker of every phase it runs: the connection, its name in the
/// leases, and the shutdown.
#[derive(Clone)]
pub(super) struct Worker {
    js: JetStream,
    name: String,
    shutdown: Shutdown,
}

/// Completes when a worker must stop: at shutdown, or when its lease is lost.
pub(super) type Stop = BoxFuture<'static, ()>;

/// How often a partitioned worker asks whether its input's partitions changed.
const PARTITIONS_ASKED_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Completes once `input` has another number of partitions than `partitions`.
fn until_partitions_change(
    js: JetStream,
    phase: &str,
    input: Phase,
    partitions: u32,
) -> impl Future<Output = ()> + Send + 'static {
    let phase = phase.to_owned();
    async move {
        loop {
            tokio::time::sleep(PARTITIONS_ASKED_EVERY).await;
            if let Ok(now) = layout::partitions_of(&js, input).await
                && now != partitions
            {
                tracing::info!(
                    phase,
                    from = partitions,
                    to = now,
                    "the partitions changed; sharing them out anew"
                );
                return;
            }
        }
    }
}

impl Worker {
    /// Runs the stages `make` makes, one per partition of `input` this process leases as
    /// `phase`, sharing the partitions with other processes, and all of them again when their
    /// number grows.
    async fn partitioned<S: Stage + Send + 'static>(
        self,
        phase: &str,
        input: Phase,
        make: impl Fn(u32) -> S,
    ) -> Result<StageStats, BusError> {
        let run = |partitions, stop| {
            let (js, name) = (self.js.clone(), self.name.clone());
            run_partitioned(js, phase, partitions, name, DEFAULT_TTL, &make, stop)
        };
        let runs = self.following_partitions(phase, input, run).await?;
        let mut total = StageStats::default();
        runs.iter().for_each(|run| total.add(run));
        Ok(total)
    }

    /// Runs `work(n, stop)`, `n` the partitions of `input`, until shutdown; when `input` gets
    /// another number of partitions (`mapek streams apply --partitions`, ADR 0024), `stop`
    /// completes and `work` runs again with the new one. What each run returned, in order.
    async fn following_partitions<T, Fut>(
        &self,
        phase: &str,
        input: Phase,
        mut work: impl FnMut(u32, Stop) -> Fut,
    ) -> Result<Vec<T>, BusError>
    where
        Fut: Future<Output = Result<T, BusError>>,
    {
        let mut runs = Vec::new();
        while let Some(partitions) = self.partitions_of(phase, input).await {
            let changed = until_partitions_change(self.js.clone(), phase, input, partitions);
            let shutdown = self.shutdown.clone().wait();
            let stop: Stop = Box::pin(async move {
                tokio::select! {
                    () = shutdown => {}
                    () = changed => {}
                }
            });
            runs.push(work(partitions, stop).await?);
            if self.shutdown.fired() {
                break;
            }
        }
        Ok(runs)
    }

    /// How many partitions `input`'s streams hold, asked until the server answers; `None`
    /// if the process stops first.
    async fn partitions_of(&self, phase: &str, input: Phase) -> Option<u32> {
        let stop = self.shutdown.clone().wait();
        tokio::pin!(stop);
        let find = || layout::partitions_of(&self.js, input);
        until_ok(phase, "find the partitions", find, stop).await
    }

    /// Runs `work(i)` for each of `pieces` pieces this process can lease (`<name>.p<i>`),
    /// sharing them with the other processes that run it as partitions are shared; returns
    /// how many of the pieces ran here at some time. A piece that fails is logged, counted
    /// and retried.
    pub(super) async fn shared<W, Fut>(
        self,
        name: &str,
        pieces: usize,
        work: W,
    ) -> anyhow::Result<usize>
    where
        W: Fn(JetStream, usize, Stop) -> Fut,
        Fut: Future<Output = Result<(), BusError>> + Send + 'static,
    {
        let js = self.js.clone();
        let run = |i: u32, stopped: oneshot::Receiver<()>| {
            let stop = Box::pin(mapek_bus::until_stopped(stopped));
            let piece = work(js.clone(), i as usize, stop);
            async move { piece.await.map(|()| i) }
        };
        let mut ran = std::collections::BTreeSet::new();
        let ended = |r: Result<Result<u32, BusError>, _>| {
            if let Ok(Ok(i)) = r {
                ran.insert(i);
            }
        };
        let sharing = Sharing {
            phase: name,
            partitions: u32::try_from(pieces)?,
            owner: self.name,
            ttl: DEFAULT_TTL,
        };
        let stop = self.shutdown.wait();
        share_partitions(&self.js, sharing, run, ended, stop).await?;
        Ok(ran.len())
    }

    /// The streams telemetry is stored in, asked until the server answers; `None` if the
    /// process stops first.
    pub(super) async fn telemetry_streams(&self) -> Option<Vec<String>> {
        let stop = self.shutdown.clone().wait();
        tokio::pin!(stop);
        let find = || layout::streams_of(&self.js, Phase::Monitor);
        let streams = until_ok("project", "find the telemetry streams", find, stop).await?;
        Some(streams.into_iter().map(|s| s.name).collect())
    }

    /// Runs `work` under the lease `name`, so one process at a time runs it and the others
    /// stand by, and sums it up with `say` when it stops.
    pub(super) async fn singleton<W, Fut, T>(
        self,
        name: &'static str,
        work: W,
        say: impl FnOnce(T) -> String,
    ) -> anyhow::Result<String>
    where
        W: Fn(JetStream, Stop) -> Fut,
        Fut: Future<Output = Result<T, BusError>> + Send + 'static,
        T: Send + 'static,
    {
        let js = self.js.clone();
        let run = |stopped: oneshot::Receiver<()>| {
            work(js.clone(), Box::pin(mapek_bus::until_stopped(stopped)))
        };
        let stop = self.shutdown.wait();
        let stats = run_singleton(self.js, name, self.name, DEFAULT_TTL, run, stop).await?;
        Ok(match stats {
            Some(s) => format!("{name}: {}", say(s)),
            None => format!("{name}: stood by (another process held the lease)"),
        })
    }
}
