//! `mapek knowledge rebuild`: empties the SQL read model and the incident index and projects
//! the whole log into them again, every stream of every phase (telemetry may be in several).

use std::process::ExitCode;
use std::time::Instant;

use crate::Settings;
use crate::cmd::run::Stores;
use crate::cmd::status::{StoreArgs, open_read_model};

/// `mapek knowledge rebuild` flags.
#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub stores: StoreArgs,
    /// A Qdrant server (gRPC) holding the incident index, instead of the embedded one
    #[arg(long, env = "QDRANT_URL", value_name = "URL")]
    pub qdrant_url: Option<String>,
    /// Rebuild only the SQL read model, not the incident index
    #[arg(long)]
    pub sql_only: bool,
}

/// Runs `mapek knowledge rebuild`.
pub async fn run(args: RebuildArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let location = args.stores.database(settings);
    let model = open_read_model(&location, true).await?;
    let started = Instant::now();
    let stats = mapek_knowledge::rebuild(&js, &model).await?;
    // Each stream on its own (`MAPEK_MONITOR_0 20 events, MAPEK_MONITOR_1 24 events` when
    // telemetry is split): the names are those `nats stream ls` shows.
    let parts: Vec<String> = stats
        .streams()
        .into_iter()
        .map(|(stream, c)| {
            let skipped = if c.skipped > 0 {
                format!(" ({} skipped: they do not decode)", c.skipped)
            } else {
                String::new()
            };
            format!("{stream} {} events{skipped}", c.applied)
        })
        .collect();
    println!(
        "rebuilt the read model at {} from the log in {:.1} s: {}",
        model.url(),
        started.elapsed().as_secs_f64(),
        parts.join(", ")
    );
    if !args.sql_only {
        let stores = Stores::open(&args.stores, args.qdrant_url.as_deref(), settings).await?;
        let started = Instant::now();
        let stats = mapek_vectors::rebuild(&js, stores.index.clone()).await?;
        println!(
            "rebuilt the incident index at {} in {:.1} s: {} events, {} incident points written",
            stores.index.location(),
            started.elapsed().as_secs_f64(),
            stats.events,
            stats.written
        );
    }
    Ok(ExitCode::SUCCESS)
}
