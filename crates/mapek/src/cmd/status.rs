//! `mapek status`: the mesh at a glance (nodes by health, open incidents, recent actions),
//! from Redis when it is configured, else from the SQL read model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mapek_knowledge::{MeshStatus, ReadModel, Redis};

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

/// Runs `mapek status`.
pub async fn run(args: StatusArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
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
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, args.nodes));
    }
    Ok(ExitCode::SUCCESS)
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
            a.reason
        );
    }
    out
}
