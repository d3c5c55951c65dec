//! `mapek status`: the mesh at a glance (nodes by health, open incidents, recent actions),
//! from Redis when it is configured, else from the SQL read model; and the loop's progress
//! (each stream's readers, durable and not, how far behind they are, which worker reads
//! them), from the NATS server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mapek_bus::progress::{StreamProgress, loop_progress, total_behind};
use mapek_domain::Phase;
use mapek_knowledge::{MeshStatus, ReadModel, Redis};
use serde::Serialize;

use crate::Settings;
use crate::time_arg::format_ms;

/// `mapek status` flags.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print one JSON document instead of tables
    #[arg(long)]
    pub json: bool,
    /// How many recent actions to show
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub actions: usize,
    /// How many unhealthy nodes to list (all are counted)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub nodes: usize,
    /// Read the SQL read model even when Redis is configured
    #[arg(long)]
    pub sql: bool,
    /// Show only the loop's progress (from NATS), not the mesh (from the knowledge stores)
    #[arg(long = "loop", conflicts_with_all = ["no_loop", "sql"])]
    pub loop_only: bool,
    /// Do not ask the NATS server how far along the loop is
    #[arg(long)]
    pub no_loop: bool,
    #[command(flatten)]
    pub stores: StoreArgs,
}

/// Where the knowledge stores are: flags, then the environment, then `[knowledge]` in the
/// config file, then SQLite under the data directory.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The SQL read model: postgres://… or sqlite://… or a file path
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Redis: hot node health, and leases shared by several executors
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// The prefix of every Redis key, to share one server between meshes
    #[arg(
        long,
        env = "MAPEK_REDIS_PREFIX",
        value_name = "PREFIX",
        default_value = "mapek:"
    )]
    pub redis_prefix: String,
    /// The directory of the embedded stores (default ./mapek-data)
    #[arg(long, env = "MAPEK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The read model's URL or SQLite path.
    pub fn database(&self, settings: &Settings) -> String {
        let k = &settings.file.knowledge;
        if let Some(url) = self.database_url.clone().or_else(|| k.database_url.clone()) {
            return url;
        }
        let dir = self
            .data_dir
            .clone()
            .or_else(|| k.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("mapek-data"));
        dir.join("knowledge.sqlite").display().to_string()
    }

    /// Redis's URL, if configured.
    pub fn redis(&self, settings: &Settings) -> Option<String> {
        self.redis_url
            .clone()
            .or_else(|| settings.file.knowledge.redis_url.clone())
            .filter(|u| !u.is_empty())
    }
}

/// Opens the read model, refusing to create an empty SQLite file where none was projected.
pub async fn open_read_model(location: &str, create: bool) -> anyhow::Result<ReadModel> {
    let is_url = location.contains("://") || location.starts_with("sqlite:");
    if !create && !is_url && !std::path::Path::new(location).exists() {
        anyhow::bail!(
            "no read model at {location}: run `mapek run` or `mapek knowledge rebuild` first, \
             or set DATABASE_URL"
        );
    }
    let model = ReadModel::connect(location).await?;
    model.migrate().await?;
    Ok(model)
}

/// Opens (and creates) the read model for projections writing up to `writers` streams at
/// once ([`ReadModel::connect_for`]).
pub async fn open_read_model_for(location: &str, writers: u32) -> anyhow::Result<ReadModel> {
    let model = ReadModel::connect_for(location, writers).await?;
    model.migrate().await?;
    Ok(model)
}

/// The loop's progress as `mapek status` shows it.
#[derive(Debug, Serialize)]
struct LoopView {
    /// The server asked.
    nats_url: String,
    /// Messages the durable readers have yet to acknowledge, all together.
    behind: u64,
    /// Each stream and its readers, durable and not.
    streams: Vec<StreamProgress>,
}

/// How long `mapek status` waits for the NATS server before it says it cannot reach it.
const NATS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

async fn loop_view(nats_url: &str) -> anyhow::Result<LoopView> {
    let progress = async {
        let js = mapek_bus::connect(nats_url).await?;
        anyhow::Ok(loop_progress(&js).await?)
    };
    let streams = tokio::time::timeout(NATS_WAIT, progress)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} s", NATS_WAIT.as_secs()))??;
    Ok(LoopView {
        nats_url: nats_url.to_owned(),
        behind: total_behind(&streams),
        streams,
    })
}

/// Runs `mapek status`.
pub async fn run(args: StatusArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    if args.loop_only {
        let view = loop_view(&settings.nats_url)
            .await
            .with_context(|| format!("asking the NATS server at {}", settings.nats_url))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            print!("{}", render_loop(&view));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The loop's progress is asked for first and is not needed: a server that does not
    // answer is said so, and the mesh is shown all the same.
    let progress = if args.no_loop {
        None
    } else {
        Some(loop_view(&settings.nats_url).await)
    };
    let status = match args.stores.redis(settings).filter(|_| !args.sql) {
        Some(url) => {
            let redis = Redis::connect_with_prefix(&url, &args.stores.redis_prefix).await?;
            MeshStatus::from_redis(&redis, args.actions).await?
        }
        None => {
            let location = args.stores.database(settings);
            let model = open_read_model(&location, false).await?;
            MeshStatus::from_sql(&model, args.actions)
                .await
                .with_context(|| format!("reading the status from {}", model.url()))?
        }
    };
    if args.json {
        let mut doc = serde_json::to_value(&status)?;
        match &progress {
            Some(Ok(view)) => doc["loop"] = serde_json::to_value(view)?,
            Some(Err(e)) => {
                doc["loop"] = serde_json::json!({
                    "nats_url": settings.nats_url,
                    "error": format!("{e:#}"),
                });
            }
            None => {}
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&status, args.nodes));
        match &progress {
            Some(Ok(view)) => print!("{}", render_loop(view)),
            Some(Err(e)) => println!("loop: cannot ask {}: {e:#}", settings.nats_url),
            None => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of the loop's progress: a row per reader, under its stream.
fn render_loop(view: &LoopView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let all = view.streams.iter().flat_map(|s| &s.consumers);
    let readers = all.clone().filter(|c| c.durable).count();
    let subscribers = match all.filter(|c| !c.durable).count() {
        0 => String::new(),
        1 => " and 1 subscriber".to_owned(),
        n => format!(" and {n} subscribers"),
    };
    // Every phase has the same partitions (ADR 0024); the decisions' stream names them.
    let plan = view.streams.iter().filter(|s| s.phase == Phase::Plan);
    let partitions: usize = plan.map(|s| s.partitions.len()).sum();
    let _ = writeln!(
        out,
        "loop: {readers} durable readers{subscribers} on {} streams, {partitions} partitions, \
         at {}, {} messages behind",
        view.streams.len(),
        view.nats_url,
        view.behind
    );
    let names = view.streams.iter().flat_map(|s| &s.consumers);
    let width = names.map(|c| c.name.len()).max().unwrap_or(0).max(6);
    let _ = writeln!(
        out,
        "  {:<18} {:>9} {:<16}  {:<width$} {:>7} {:>7} {:>11}  HELD BY",
        "STREAM", "MESSAGES", "REPLICAS/LEADER", "READER", "BEHIND", "UNACKED", "REDELIVERED"
    );
    for s in &view.streams {
        let _ = write!(
            out,
            "  {:<18} {:>9} {:<16}",
            s.stream,
            s.messages,
            replicas_and_leader(s)
        );
        if s.consumers.is_empty() {
            let what = if s.phase == Phase::Dlq {
                "(dead letters)"
            } else {
                "(no durable reader)"
            };
            let _ = writeln!(out, "  {what}");
        }
        for (i, c) in s.consumers.iter().enumerate() {
            if i > 0 {
                let _ = write!(out, "  {:<18} {:>9} {:<16}", "", "", "");
            }
            let held_by = match (&c.owner, c.reading) {
                _ if !c.durable => "(subscriber, not the loop's)".to_owned(),
                (Some(owner), _) => owner.clone(),
                (None, true) => "(reading, no lease)".to_owned(),
                (None, false) => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<width$} {:>7} {:>7} {:>11}  {held_by}",
                c.name, c.behind, c.unacked, c.redelivered
            );
        }
    }
    out
}

/// `R3 n2`: how many copies the stream keeps and which server leads it; `R3 (no leader)`
/// while a cluster elects one; `R1` on a single server, which has no leader to name.
fn replicas_and_leader(s: &StreamProgress) -> String {
    match (&s.leader, s.replicas) {
        (Some(leader), r) => format!("R{r} {leader}"),
        (None, 1) => "R1".to_owned(),
        (None, r) => format!("R{r} (no leader)"),
    }
}

/// The human form.
fn render(s: &MeshStatus, max_nodes: usize) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let counts: Vec<String> = s
        .health_counts()
        .iter()
        .map(|(h, n)| format!("{n} {h}"))
        .collect();
    let _ = writeln!(
        out,
        "nodes: {} ({}), from {}",
        s.nodes.len(),
        counts.join(", "),
        s.source
    );
    let unhealthy: Vec<_> = s.nodes.iter().filter(|n| n.health != "ok").collect();
    if !unhealthy.is_empty() {
        let _ = writeln!(
            out,
            "  {:<16} {:<9} {:<25} {:>5} {:>5} {:>6} {:>10}",
            "NODE", "HEALTH", "LAST SEEN", "CPU", "MEM", "LOSS", "LINKS DOWN"
        );
        for n in unhealthy.iter().take(max_nodes) {
            let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0));
            let _ = writeln!(
                out,
                "  {:<16} {:<9} {:<25} {:>5} {:>5} {:>6} {:>10}",
                n.node,
                n.health,
                format_ms(n.ts_ms),
                pct(n.cpu),
                pct(n.mem),
                pct(n.loss),
                format!("{}/{}", n.links_down, n.links_total)
            );
        }
        if unhealthy.len() > max_nodes {
            let _ = writeln!(out, "  … and {} more", unhealthy.len() - max_nodes);
        }
    }
    let _ = writeln!(out, "open incidents: {}", s.open_incidents.len());
    for i in &s.open_incidents {
        let peer = i
            .peer
            .as_deref()
            .map(|p| format!(" {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<16} {:<18} since {}  severity {:.2}  {}",
            i.node,
            format!("{}{peer}", i.kind),
            format_ms(i.opened_ms),
            i.severity,
            i.summary
        );
    }
    let _ = writeln!(out, "recent actions: {}", s.recent_actions.len());
    for a in &s.recent_actions {
        let _ = writeln!(
            out,
            "  {}  {:<16} {:<16} {:<8} {}",
            format_ms(a.ts_ms),
            a.node,
            a.action,
            a.status,
            mapek_domain::event::with_escalation(&a.reason, a.escalation.as_ref())
        );
    }
    out
}
