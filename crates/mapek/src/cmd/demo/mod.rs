//! `mapek demo`: the whole loop on a simulated mesh, on one machine, with nothing running.
//!
//! # Layout
//! - this module: [`run`], step by step: a NATS server, the scripted mesh, the loop's
//!   workers as the demo runs them, the run itself, and what the log holds afterwards
//!   (the audit, the shadow policy's agreement).
//! - `screen`: each event on the screen as it comes, and the summary.

mod screen;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use mapek_audit::VerifyingKey;
use mapek_audit::audit::{AuditOptions, AuditReport};
use mapek_audit::keys::Signs;
use mapek_bus::JetStream;
use mapek_domain::{Phase, Policy};
use mapek_sim::{Fault, FaultScript, Mesh, MeshConfig, RunReport, default_script};
use tokio::task::JoinSet;

use super::run::{Loop, PhaseArg, Stores};
use super::status::StoreArgs;
use crate::Settings;
use crate::embedded::EmbeddedNats;
use crate::shutdown::Shutdown;
use screen::Screen;

/// `mapek demo`
#[derive(Debug, Args)]
#[command(after_long_help = DEMO_HELP)]
pub struct DemoArgs {
    /// How many simulated nodes
    #[arg(long, default_value_t = 50)]
    nodes: usize,

    /// How many times faster than the clock simulated time runs
    #[arg(long, default_value_t = 5.0)]
    speed: f64,

    /// The simulation's seed: the same seed gives the same mesh, faults and noise
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// A Qdrant server (gRPC, http://host:6334) for the incident index [default: qdrant-edge
    /// under the data directory]
    #[arg(long, env = "QDRANT_URL", value_name = "URL")]
    qdrant_url: Option<String>,

    /// The knowledge's stores [default: SQLite and qdrant-edge under the data directory],
    /// which also holds the embedded nats-server's store and the demo's keys
    #[command(flatten)]
    stores: StoreArgs,
}

impl DemoArgs {
    /// Where the demo keeps its files: `--data-dir`, else ./mapek-data.
    fn data_dir(&self) -> PathBuf {
        self.stores
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("mapek-data"))
    }
}

const DEMO_HELP: &str = "\
The demo starts a nats-server child process with its store under ./mapek-data (or uses the
server at MAPEK_NATS_URL / --nats-url), creates the streams, and runs every phase of the loop
against a simulated mesh whose nodes obey the loop's commands. A scripted series of faults
(a degraded link, a CPU hog, a flapping link, a node crash, a partition) plays out over two
minutes of simulated time; each decision, action and outcome is printed as it happens, and a
summary ends the run.";

/// Runs `mapek demo`.
pub async fn run(args: DemoArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    // The embedded server lives as long as this function: dropping it stops the child.
    let (_embedded, url) = nats_server(&args, settings)?;
    let js = mapek_bus::connect(&url).await?;
    let client = mapek_bus::connect_client(&url).await?;
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin()).await?;
    let scenario = Scenario::new(&args)?;
    scenario.introduce(&args, &url);
    let settings = demo_settings(settings, &url);
    let keys = DemoKeys::open(&args.data_dir().join("keys"))?;
    let workers = demo_loop(&args, &settings, &keys).await?;
    let shutdown = Shutdown::on_ctrl_c(Some(scenario.wall));
    let mut screen = Screen::watch(&js);
    let start_ms = screen.start_ms;
    let report = run_loop(&js, &client, &workers, scenario, &shutdown, &mut screen).await?;
    println!("\n{}", screen.finish(report.ticks, report.commands).await);
    if let Some(stores) = &workers.stores {
        println!("{}", knowledge_line(stores));
    }
    println!("{}", audit_line(&js, &keys).await?);
    println!("{}", shadow_summary(&js, start_ms, &settings).await);
    Ok(ExitCode::SUCCESS)
}

/// The NATS server the demo runs against: the one the settings name, or one started under
/// the data directory (returned too: dropping it stops it); and its URL.
fn nats_server(
    args: &DemoArgs,
    settings: &Settings,
) -> anyhow::Result<(Option<EmbeddedNats>, String)> {
    if settings.nats_url_given {
        return Ok((None, settings.nats_url.clone()));
    }
    let nats = EmbeddedNats::start(&args.data_dir().join("nats"))?;
    let url = nats.url().to_owned();
    Ok((Some(nats), url))
}

/// The simulated mesh with its scripted faults, and how long the demo runs.
struct Scenario {
    mesh: Mesh,
    script: FaultScript,
    /// Simulated seconds a wall-clock second.
    hz: f64,
    /// Simulated time: until the last incident has had time to resolve.
    simulated_s: f64,
    /// The same on the wall clock.
    wall: Duration,
}

impl Scenario {
    fn new(args: &DemoArgs) -> anyhow::Result<Self> {
        let script = default_script(args.nodes);
        let config = MeshConfig {
            nodes: args.nodes,
            ..MeshConfig::default()
        };
        let mesh = Mesh::new(config, args.seed)?.with_faults(&script)?;
        let last_fault_ends = script
            .fault
            .iter()
            .map(|f| f.start_s() + f.duration_s().unwrap_or(15.0))
            .fold(0.0, f64::max);
        // Time for the last incident to resolve (a window of clean samples) after its fault
        // ends.
        let simulated_s = last_fault_ends + 40.0;
        let hz = args.speed.max(0.1);
        Ok(Self {
            mesh,
            script,
            hz,
            simulated_s,
            wall: Duration::from_secs_f64(simulated_s / hz),
        })
    }

    /// Says what is about to happen.
    fn introduce(&self, args: &DemoArgs, url: &str) {
        println!(
            "mapek demo: {} simulated nodes (seed {}), NATS at {url}, simulated time {:.0}x",
            args.nodes, args.seed, args.speed
        );
        for fault in &self.script.fault {
            println!("  fault at {:>5.0} s: {}", fault.start_s(), describe(fault));
        }
        println!(
            "  running for {:.0} s of simulated time ({:.0} s here)\n",
            self.simulated_s,
            self.wall.as_secs_f64()
        );
    }
}

/// The settings with the demo's timings: a crash lasts 15 s in the script, so silence is
/// judged after 10 s of simulated time; and an action is judged after 30 s, so the last
/// incidents get their outcome before the end.
fn demo_settings(settings: &Settings, url: &str) -> Settings {
    let mut file = settings.file.clone();
    file.analyze.silent_after_ms = 10_000;
    file.execute.evaluate_window_ms = 30_000;
    Settings {
        nats_url: url.to_owned(),
        nats_url_given: true,
        file,
    }
}

/// The demo's key pairs (secret, public), made on the first run and kept with the rest of
/// its data: decisions are signed and the executor checks them (ADR 0006), and the executor
/// signs its results with a key of its own (ADR 0019).
struct DemoKeys {
    decisions: (PathBuf, PathBuf),
    results: (PathBuf, PathBuf),
}

impl DemoKeys {
    /// The key pairs in `dir`, made if missing.
    fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            decisions: demo_keys(dir, Signs::Decisions)?,
            results: demo_keys(dir, Signs::Results)?,
        })
    }
}

/// The loop's workers as the demo runs them: signing and checking with `keys`, running the
/// shadow policy, and keeping the knowledge in the embedded stores under the data directory
/// (SQLite, qdrant-edge) unless the store arguments (DATABASE_URL, QDRANT_URL, REDIS_URL)
/// name others.
async fn demo_loop(args: &DemoArgs, settings: &Settings, keys: &DemoKeys) -> anyhow::Result<Loop> {
    let worker = format!("demo-{}", std::process::id());
    let (secret, public) = &keys.decisions;
    let workers = Loop::from_settings(None, Some(worker), settings)?
        .with_keys(Some(secret), Some(public))?
        .with_result_key(Some(&keys.results.0))?
        .with_shadow(Policy::parse(SHADOW_POLICY)?)?;
    let mut store_args = args.stores.clone();
    store_args.data_dir = Some(args.data_dir());
    let stores = Stores::open(&store_args, args.qdrant_url.as_deref(), settings).await?;
    Ok(workers.with_stores(stores))
}

/// Runs the loop's workers and the simulated mesh until `shutdown`, showing what happens;
/// then stops the mesh, and the workers once they have taken in what it published last.
async fn run_loop(
    js: &JetStream,
    client: &async_nats::Client,
    workers: &Loop,
    scenario: Scenario,
    shutdown: &Shutdown,
    screen: &mut Screen,
) -> anyhow::Result<RunReport> {
    let spans = crate::otel::install()?;
    let mut tasks = JoinSet::new();
    let (stop_workers, workers_stop) = Shutdown::manual();
    workers.spawn(js, client, PhaseArg::All, &workers_stop, &mut tasks);
    let sim = tokio::spawn(mapek_sim::run_faster(
        js.clone(),
        client.clone(),
        scenario.mesh,
        scenario.hz,
        1000,
        screen.start_ms,
        shutdown.clone().wait(),
    ));
    screen.show_until(shutdown.clone().wait()).await;
    let report = sim.await??;
    if !drained(js, Duration::from_secs(10)).await {
        eprintln!("mapek demo: the loop had not caught up with the mesh 10 s after it stopped");
    }
    let _ = stop_workers.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            eprintln!("error: {e:#}");
        }
    }
    if let Some(spans) = spans {
        spans.shutdown().await;
    }
    Ok(report)
}

/// Waits until every durable consumer of the loop's streams has taken and acknowledged all
/// its stream holds, at most `limit`; whether they did.
async fn drained(js: &JetStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let phases = [Phase::Monitor, Phase::Analyze, Phase::Plan, Phase::Execute];
    loop {
        match mapek_bus::progress::behind(js, &phases).await {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the knowledge went, in a line.
fn knowledge_line(stores: &Stores) -> String {
    format!(
        "  knowledge: the read model is in {} (try `mapek status`), the incident index in {} \
         (try `mapek knowledge similar <incident>`)",
        stores.database,
        stores.index.location()
    )
}

/// The audit of the log, in a line: every decision signed and linked and every result
/// answering its decision, signed by the executor; or the first thing wrong.
async fn audit_line(js: &JetStream, keys: &DemoKeys) -> anyhow::Result<String> {
    let options = AuditOptions {
        decision_key: Some(VerifyingKey::load(&keys.decisions.1)?),
        result_key: Some(VerifyingKey::load(&keys.results.1)?),
        // A data directory kept from before the executor signed holds older results.
        results_signed_since_ms: made_ms(&keys.results.1),
        ..AuditOptions::default()
    };
    let audit = mapek_audit::audit::verify(js, options).await?;
    Ok(audit_summary(&audit))
}

fn audit_summary(audit: &AuditReport) -> String {
    if audit.is_clean() {
        format!(
            "  audit: all {} decisions in the log are signed (ML-DSA-65) and linked, {} chains; \
             all {} results answer them, {} signed by the executor",
            audit.decisions, audit.partitions, audit.results, audit.results_verified
        )
    } else if let Some(cut) = audit.cuts.first() {
        format!("  audit: {cut}")
    } else if let Some(failure) = audit.failures.first() {
        format!(
            "  audit: {} of {} decisions fail: {}",
            audit.failures.len(),
            audit.decisions,
            failure.broken
        )
    } else {
        format!(
            "  audit: {} of {} results fail: {}",
            audit.result_failures.len(),
            audit.results,
            audit.result_failures[0]
        )
    }
}

/// The candidate policy the demo runs in the shadow of the live one (ADR 0020).
const SHADOW_POLICY: &str = include_str!("../../../../../policies/restart-first.toml");

/// How the shadow policy's decisions of this run compare with the live ones, in a line.
async fn shadow_summary(js: &JetStream, start_ms: i64, settings: &Settings) -> String {
    let source = mapek_replay::Source::live(js.clone());
    let options = mapek_replay::ShadowOptions {
        range: mapek_replay::Range {
            from_ms: Some(start_ms),
            to_ms: None,
        },
        execute: settings.file.execute.clone(),
        mesh_nodes: mapek_bus::streams::count_reporting_nodes(js)
            .await
            .unwrap_or_default(),
        ..Default::default()
    };
    match mapek_replay::shadow_diff(&source, &options)
        .await
        .as_deref()
    {
        Ok([report, ..]) => {
            let t = &report.total;
            format!(
                "  shadow policy {} (policies/restart-first.toml): {} same, {} changed, {} \
                 shadow only, {} live only; {} of its decisions would have been refused \
                 (`mapek shadow diff` shows each)",
                report.policy, t.same, t.changed, t.added, t.removed, report.would_be_refused
            )
        }
        Ok([]) => "  shadow policy: no decisions".to_owned(),
        Err(e) => format!("  shadow policy: {e}"),
    }
}

/// The demo's keys for what `signs` in `dir`, made on the first run.
fn demo_keys(dir: &Path, signs: Signs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (secret_file, public_file) = signs.files();
    let (secret, public) = (dir.join(secret_file), dir.join(public_file));
    if secret.exists() && public.exists() {
        return Ok((secret, public));
    }
    Ok(mapek_audit::keys::generate_for(dir, signs)?)
}

/// When the file at `path` was last written, in ms since the Unix epoch: for a key, when it
/// was made, before which nothing was signed with it.
fn made_ms(path: &Path) -> Option<i64> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

fn describe(fault: &Fault) -> String {
    match fault {
        Fault::LinkDegradation {
            a,
            b,
            added_latency_ms,
            added_loss,
            ..
        } => format!(
            "link {a}-{b} degrades (+{added_latency_ms} ms, +{:.0}% loss)",
            added_loss * 100.0
        ),
        Fault::NodeCrash { node, .. } => format!("node {node} crashes"),
        Fault::CpuHog { node, .. } => format!("a hung service spins {node}'s CPU"),
        Fault::FlappingLink { a, b, .. } => format!("link {a}-{b} flaps"),
        Fault::Partition { nodes, .. } => format!(
            "nodes {} are cut off",
            nodes
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
