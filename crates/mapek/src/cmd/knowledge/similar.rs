//! `mapek knowledge similar <incident>`: the past incidents nearest to one, from the incident
//! index, with the action taken on each, whether it worked, and how similar it is.
//!
//! It asks the index the planner's question: incidents of the same kind whose outcome is
//! known, nearest by their feature vectors (`docs/knowledge-vectors.md`). With `--at-open`,
//! only what was known when the incident opened: what the planner could have seen.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use mapek_vectors::{EdgeIndex, Incident, SimilarQuery};
use serde_json::json;

use crate::Settings;

/// `mapek knowledge similar` flags.
#[derive(Debug, clap::Args)]
pub struct SimilarArgs {
    /// The incident id (as in `mapek subscribe` and decisions)
    pub incident: String,
    /// How many past incidents to list
    #[arg(short = 'k', long, default_value_t = 5)]
    pub k: usize,
    /// Only incidents whose outcome was known when this one opened
    #[arg(long)]
    pub at_open: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// A Qdrant server (gRPC), instead of the embedded index under the data directory
    #[arg(long, env = "QDRANT_URL", value_name = "URL")]
    pub qdrant_url: Option<String>,
    /// The directory of the embedded stores (default ./mapek-data)
    #[arg(long, env = "MAPEK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Runs `mapek knowledge similar`.
pub async fn run(args: SimilarArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let k = &settings.file.knowledge;
    let url = args
        .qdrant_url
        .clone()
        .or_else(|| k.qdrant_url.clone())
        .filter(|u| !u.is_empty());
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| k.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("mapek-data"));
    if url.is_none() {
        // Opening creates an index; asking an index that was never written is a mistake.
        let dir = EdgeIndex::default_dir(&data_dir);
        if !dir.join("edge_config.json").exists() {
            anyhow::bail!(
                "no incident index at {}: run `mapek run` (it projects incidents as they \
                 close) or `mapek knowledge rebuild`, or set QDRANT_URL or MAPEK_DATA_DIR",
                dir.display()
            );
        }
    }
    let index = mapek_vectors::open(url.as_deref(), &data_dir).await?;
    let Some(incident) = index.get(&args.incident).await? else {
        anyhow::bail!(
            "incident {} is not in the incident index at {}: check the id (`mapek subscribe \
             --json` shows incident ids), or project the log with `mapek knowledge rebuild`",
            args.incident,
            index.location()
        );
    };
    let (Some(kind), false) = (incident.kind, incident.features.is_empty()) else {
        anyhow::bail!(
            "incident {} has no opening symptom in the index at {} yet, so nothing can be \
             compared with it",
            args.incident,
            index.location()
        );
    };
    let query = SimilarQuery {
        vector: incident.features.clone(),
        kind: Some(kind),
        known_before_ms: if args.at_open {
            incident.opened_ms
        } else {
            None
        },
        exclude: Some(incident.incident_id.clone()),
        k: args.k,
    };
    let hits = index
        .search(query)
        .await
        .with_context(|| format!("searching the incident index at {}", index.location()))?;
    if args.json {
        let similar: Vec<_> = hits
            .iter()
            .map(|h| json!({ "score": h.score, "incident": h.incident }))
            .collect();
        let out = json!({ "incident": incident, "similar": similar });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", describe(&incident));
    if hits.is_empty() {
        println!(
            "no past {} incidents with a known outcome{}",
            kind.as_str(),
            if args.at_open { " when it opened" } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<18} {:<10} {:<16} {:<13} {:>9}  summary",
        "score", "incident", "node", "action", "outcome", "opened"
    );
    for h in &hits {
        let i = &h.incident;
        println!(
            "{:>6.3}  {:<18} {:<10} {:<16} {:<13} {:>9}  {}",
            h.score,
            short(&i.incident_id),
            i.node,
            i.action.map_or("-", |a| a.as_str()),
            outcome(i),
            relative(i.opened_ms, incident.opened_ms),
            i.summary.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The incident's one-line header.
fn describe(i: &Incident) -> String {
    let kind = i.kind.map_or("?", |k| k.as_str());
    let peer = i
        .peer
        .as_ref()
        .map_or(String::new(), |p| format!(" (peer {p})"));
    let action = i.action.map_or("no decision yet", |a| a.as_str());
    format!(
        "incident {} on {}{peer}: {kind} at severity {:.2}; {action}, {}",
        i.incident_id,
        i.node,
        i.severity.unwrap_or(0.0),
        outcome(i)
    )
}

fn outcome(i: &Incident) -> &'static str {
    match i.resolved {
        Some(true) => "resolved",
        Some(false) => "not resolved",
        None => "no outcome yet",
    }
}

/// At most 16 characters of an id, so the table stays aligned.
fn short(id: &str) -> String {
    match id.char_indices().nth(16) {
        Some((at, _)) => format!("{}…", &id[..at]),
        None => id.to_owned(),
    }
}

/// When the past incident opened, relative to this one (`-3.5m`), in event time.
fn relative(then: Option<i64>, now: Option<i64>) -> String {
    match (then, now) {
        (Some(t), Some(n)) => {
            let secs = (t - n) as f64 / 1000.0;
            if secs.abs() < 120.0 {
                format!("{secs:+.0}s")
            } else if secs.abs() < 7200.0 {
                format!("{:+.1}m", secs / 60.0)
            } else {
                format!("{:+.1}h", secs / 3600.0)
            }
        }
        _ => "-".to_owned(),
    }
}
