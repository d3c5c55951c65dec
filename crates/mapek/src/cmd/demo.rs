//! `mapek demo`: the whole loop on a simulated mesh, on one machine, with nothing running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use mapek_audit::VerifyingKey;
use mapek_audit::audit::AuditOptions;
use mapek_audit::keys::Signs;
use mapek_bus::{JetStream, StartAt, Subscriber, SubscriberConfig};
use mapek_codec::AvroEvent;
use mapek_domain::{
    ActionResult, ActionStatus, Decision, Outcome, OutcomeResult, Phase, Policy, Symptom,
    SymptomState,
};
use mapek_sim::{Fault, Mesh, MeshConfig, default_script};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::run::{Loop, PhaseArg, Stores};
use super::status::StoreArgs;
use crate::Settings;
use crate::embedded::EmbeddedNats;
use crate::shutdown::Shutdown;
use crate::time_arg::now_ms;

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

/// One line for the screen, from whichever stream it came.
enum Seen {
    Symptom(Symptom),
    Decision(Decision),
    Action(ActionResult),
    Outcome(Outcome),
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

async fn forward<E: AvroEvent + Send + 'static>(
    js: JetStream,
    wrap: fn(E) -> Seen,
    tx: mpsc::UnboundedSender<Seen>,
    since: time::OffsetDateTime,
) -> anyhow::Result<()> {
    let config = SubscriberConfig {
        node: None,
        start: StartAt::Since(since),
    };
    let mut sub = Subscriber::<E>::open(&js, config).await?;
    while let Some(received) = sub.next().await {
        if let Ok(event) = received?.event
            && tx.send(wrap(event)).is_err()
        {
            break;
        }
    }
    Ok(())
}

/// Runs `mapek demo`.
pub async fn run(args: DemoArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    // The embedded server lives as long as this function: dropping it stops the child.
    let (_embedded, url) = if settings.nats_url_given {
        (None, settings.nats_url.clone())
    } else {
        let nats = EmbeddedNats::start(&args.data_dir().join("nats"))?;
        let url = nats.url().to_owned();
        (Some(nats), url)
    };
    let js = mapek_bus::connect(&url).await?;
    let client = mapek_bus::connect_client(&url).await?;
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin()).await?;

    let script = default_script(args.nodes);
    let mesh = Mesh::new(
        MeshConfig {
            nodes: args.nodes,
            ..MeshConfig::default()
        },
        args.seed,
    )?
    .with_faults(&script)?;
    let last_fault_ends = script
        .fault
        .iter()
        .map(|f| f.start_s() + f.duration_s().unwrap_or(15.0))
        .fold(0.0, f64::max);
    // Time for the last incident to resolve (a window of clean samples) after its fault ends.
    let simulated_s = last_fault_ends + 40.0;
    let wall = Duration::from_secs_f64(simulated_s / args.speed.max(0.1));

    println!(
        "mapek demo: {} simulated nodes (seed {}), NATS at {url}, simulated time {:.0}x",
        args.nodes, args.seed, args.speed
    );
    for fault in &script.fault {
        println!("  fault at {:>5.0} s: {}", fault.start_s(), describe(fault));
    }
    println!(
        "  running for {:.0} s of simulated time ({:.0} s here)\n",
        simulated_s,
        wall.as_secs_f64()
    );

    let mut file = settings.file.clone();
    // A crash lasts 15 s in the script: judge silence after 10 s of simulated time; and
    // judge an action after 30 s, so the last incidents get their outcome before the end.
    file.analyze.silent_after_ms = 10_000;
    file.execute.evaluate_window_ms = 30_000;
    let demo_settings = Settings {
        nats_url: url.clone(),
        nats_url_given: true,
        file,
    };
    // Decisions are signed and the executor checks them (ADR 0006), and the executor signs
    // its results with a key of its own (ADR 0019); the key pairs are made on the first run
    // and kept with the rest of the demo's data.
    let keys_dir = args.data_dir().join("keys");
    let (secret, public) = demo_keys(&keys_dir, Signs::Decisions)?;
    let (result_secret, result_public) = demo_keys(&keys_dir, Signs::Results)?;
    let workers = Loop::from_settings(
        None,
        Some(format!("demo-{}", std::process::id())),
        &demo_settings,
    )?
    .with_keys(Some(&secret), Some(&public))?
    .with_result_key(Some(&result_secret))?
    .with_shadow(Policy::parse(SHADOW_POLICY)?)?;
    // The knowledge goes to the embedded stores under the data directory (SQLite, qdrant-edge),
    // unless the store arguments (DATABASE_URL, QDRANT_URL, REDIS_URL) name others.
    let mut store_args = args.stores.clone();
    store_args.data_dir = Some(args.data_dir());
    let stores = Stores::open(&store_args, args.qdrant_url.as_deref(), &demo_settings).await?;
    let knowledge_at = stores.database.clone();
    let index_at = stores.index.location().to_owned();
    let workers = workers.with_stores(stores);

    let shutdown = Shutdown::on_ctrl_c(Some(wall));
    let since = time::OffsetDateTime::now_utc();
    let start_ms = now_ms();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut viewers = JoinSet::new();
    viewers.spawn(forward::<Symptom>(
        js.clone(),
        Seen::Symptom,
        tx.clone(),
        since,
    ));
    viewers.spawn(forward::<Decision>(
        js.clone(),
        Seen::Decision,
        tx.clone(),
        since,
    ));
    viewers.spawn(forward::<ActionResult>(
        js.clone(),
        Seen::Action,
        tx.clone(),
        since,
    ));
    viewers.spawn(forward::<Outcome>(js.clone(), Seen::Outcome, tx, since));

    let spans = crate::otel::install()?;
    let mut tasks = JoinSet::new();
    // The workers stop after the mesh, once they have taken in what it published last.
    let (stop_workers, workers_stop) = Shutdown::manual();
    workers.spawn(&js, &client, PhaseArg::All, &workers_stop, &mut tasks);
    let sim_stop = shutdown.clone();
    let hz = args.speed.max(0.1);
    let sim = tokio::spawn(mapek_sim::run_faster(
        js.clone(),
        client.clone(),
        mesh,
        hz,
        1000,
        start_ms,
        sim_stop.wait(),
    ));

    let mut tally = Tally::default();
    let done = shutdown.clone().wait();
    tokio::pin!(done);
    loop {
        tokio::select! {
            seen = rx.recv() => match seen {
                Some(seen) => print_lines(tally.show(seen, start_ms)),
                None => break,
            },
            () = &mut done => break,
        }
    }
    let report = sim.await??;
    if !drained(&js, Duration::from_secs(10)).await {
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
    // What was stored just before the stop is still on its way to the screen.
    while let Ok(Some(seen)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        print_lines(tally.show(seen, start_ms));
    }
    viewers.abort_all();
    print_lines(tally.show_early(start_ms));
    println!("\n{}", tally.summary(report.ticks, report.commands));
    println!(
        "  knowledge: the read model is in {knowledge_at} (try `mapek status`), the incident \
         index in {index_at} (try `mapek knowledge similar <incident>`)"
    );
    let options = AuditOptions {
        decision_key: Some(VerifyingKey::load(&public)?),
        result_key: Some(VerifyingKey::load(&result_public)?),
        // A data directory kept from before the executor signed holds older results.
        results_signed_since_ms: made_ms(&result_public),
        ..AuditOptions::default()
    };
    let audit = mapek_audit::audit::verify(&js, options).await?;
    if audit.is_clean() {
        println!(
            "  audit: all {} decisions in the log are signed (ML-DSA-65) and linked, {} chains; \
             all {} results answer them, {} signed by the executor",
            audit.decisions, audit.partitions, audit.results, audit.results_verified
        );
    } else if let Some(cut) = audit.cuts.first() {
        println!("  audit: {cut}");
    } else if let Some(failure) = audit.failures.first() {
        println!(
            "  audit: {} of {} decisions fail: {}",
            audit.failures.len(),
            audit.decisions,
            failure.broken
        );
    } else {
        println!(
            "  audit: {} of {} results fail: {}",
            audit.result_failures.len(),
            audit.results,
            audit.result_failures[0]
        );
    }
    println!("{}", shadow_summary(&js, start_ms, &demo_settings).await);
    Ok(ExitCode::SUCCESS)
}

/// The candidate policy the demo runs in the shadow of the live one (ADR 0020).
const SHADOW_POLICY: &str = include_str!("../../../../policies/restart-first.toml");

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

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}

/// What the demo saw, for the running display and the summary.
#[derive(Default)]
struct Tally {
    symptoms: BTreeMap<String, Symptom>,
    opened: u64,
    resolved: u64,
    decisions: u64,
    applied: u64,
    refused: u64,
    /// Refused actions handed to a human.
    escalated: u64,
    failed: u64,
    outcomes_resolved: u64,
    outcomes_unresolved: u64,
    recovery_ms: Vec<i64>,
    /// The decisions on the screen, by id.
    decided: BTreeSet<String>,
    /// Results that came in before their decision (the two are read from two streams),
    /// held until it is shown, by decision id.
    early: BTreeMap<String, Vec<ActionResult>>,
}

impl Tally {
    /// The lines `seen` puts on the screen (none for an update, or for a result held until
    /// its decision comes, which brings it).
    fn show(&mut self, seen: Seen, start_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        let at = |ts: i64| format!("t+{:>5.1}s", (ts - start_ms) as f64 / 1000.0);
        match seen {
            Seen::Symptom(s) => {
                match s.state {
                    SymptomState::Open => self.opened += 1,
                    SymptomState::Resolve => self.resolved += 1,
                    SymptomState::Update => {}
                }
                if s.state != SymptomState::Update {
                    out.push(format!(
                        "{}  {:<5}  {:<9} {:<18} {}",
                        at(s.ts_ms),
                        s.node,
                        s.state.as_str().to_uppercase(),
                        s.kind.as_str(),
                        s.summary
                    ));
                }
                self.symptoms.insert(s.symptom_id.clone(), s);
            }
            Seen::Decision(d) => {
                self.decisions += 1;
                self.decided.insert(d.decision_id.clone());
                let early = self.early.remove(&d.decision_id);
                let action = match (&d.action.peer, &d.action.service) {
                    (Some(p), _) => format!("{} {p}", d.action.kind.as_str()),
                    (_, Some(s)) => format!("{} {s}", d.action.kind.as_str()),
                    _ => d.action.kind.as_str().to_owned(),
                };
                out.push(format!(
                    "{}  {:<5}  DECIDE    {:<18} {}",
                    at(d.ts_ms),
                    d.node,
                    action,
                    d.reason
                ));
                for r in early.into_iter().flatten() {
                    out.extend(self.show(Seen::Action(r), start_ms));
                }
            }
            Seen::Action(r) if !self.decided.contains(&r.decision_id) => {
                self.early.entry(r.decision_id.clone()).or_default().push(r);
            }
            Seen::Action(r) => {
                match r.status {
                    ActionStatus::Applied => self.applied += 1,
                    ActionStatus::Refused => self.refused += 1,
                    ActionStatus::Failed => self.failed += 1,
                }
                self.escalated += u64::from(r.escalation.is_some());
                let detail = if !r.reason.is_empty() {
                    r.reason_and_escalation()
                } else if r.attempts == 0 {
                    "nothing sent to the node".to_owned()
                } else {
                    format!("{} attempt(s)", r.attempts)
                };
                out.push(format!(
                    "{}  {:<5}  {:<9} {:<18} {}",
                    at(r.ts_ms),
                    r.node,
                    r.status.as_str().to_uppercase(),
                    r.action.kind.as_str(),
                    detail
                ));
            }
            Seen::Outcome(o) => {
                match o.result {
                    OutcomeResult::Resolved => self.outcomes_resolved += 1,
                    OutcomeResult::NotResolved => self.outcomes_unresolved += 1,
                }
                if let Some(ms) = o.recovery_ms {
                    self.recovery_ms.push(ms);
                }
                out.push(format!(
                    "{}  {:<5}  OUTCOME   {:<18} {}",
                    at(o.ts_ms),
                    o.node,
                    o.result.as_str(),
                    o.detail
                ));
            }
        }
        out
    }

    /// The lines of the results still held for a decision that never came to the screen.
    fn show_early(&mut self, start_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        for (decision_id, results) in std::mem::take(&mut self.early) {
            self.decided.insert(decision_id);
            for r in results {
                out.extend(self.show(Seen::Action(r), start_ms));
            }
        }
        out
    }

    fn summary(&self, ticks: u64, commands: u64) -> String {
        let mttr = if self.recovery_ms.is_empty() {
            "no recovery measured".to_owned()
        } else {
            let mean = self.recovery_ms.iter().sum::<i64>() as f64 / self.recovery_ms.len() as f64;
            format!(
                "mean time to recover {:.1} s of simulated time",
                mean / 1000.0
            )
        };
        format!(
            "summary: {} incidents opened, {} resolved; {} decisions; actions: {} applied, {} \
             refused ({} escalated to a human), {} failed; outcomes: {} resolved, {} not \
             resolved; {mttr}. ({ticks} ticks simulated, {commands} commands answered by the \
             mesh)",
            self.opened,
            self.resolved,
            self.decisions,
            self.applied,
            self.refused,
            self.escalated,
            self.failed,
            self.outcomes_resolved,
            self.outcomes_unresolved
        )
    }
}

#[cfg(test)]
mod tests {
    use mapek_testkit::samples;

    use super::*;

    /// A tally that has read the sample result before its decision.
    fn result_first() -> Tally {
        let mut tally = Tally::default();
        let held = tally.show(Seen::Action(samples::action_result()), samples::TS_MS);
        assert!(held.is_empty(), "{held:?}");
        tally
    }

    #[test]
    fn a_result_read_before_its_decision_is_shown_after_it() {
        let mut tally = result_first();
        let start = samples::TS_MS;
        let lines = tally.show(Seen::Decision(samples::decision()), start);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("DECIDE"), "{lines:?}");
        assert!(lines[1].contains("APPLIED"), "{lines:?}");
        assert_eq!((tally.decisions, tally.applied), (1, 1));
    }

    #[test]
    fn a_result_whose_decision_never_came_is_shown_at_the_end() {
        let mut tally = result_first();
        let start = samples::TS_MS;
        let lines = tally.show_early(start);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("APPLIED"), "{lines:?}");
        assert!(tally.show_early(start).is_empty());
    }
}
