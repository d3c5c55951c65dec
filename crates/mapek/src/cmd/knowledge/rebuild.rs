//! `mapek knowledge rebuild`: empties the SQL read model and projects the whole log into it
//! again.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mapek_knowledge::PROJECTED;

use crate::Settings;
use crate::cmd::status::{StoreArgs, open_read_model};

/// `mapek knowledge rebuild` flags.
#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub stores: StoreArgs,
}

/// Runs `mapek knowledge rebuild`.
pub async fn run(args: RebuildArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let location = args.stores.database(settings);
    let model = open_read_model(&location, true).await?;
    let started = Instant::now();
    let stats = mapek_knowledge::rebuild(&js, &model).await?;
    let mut parts = Vec::new();
    for phase in PROJECTED {
        let c = stats.stream(phase);
        let skipped = c.skipped.load(Ordering::Relaxed);
        let skipped = if skipped > 0 {
            format!(" ({skipped} skipped: they do not decode)")
        } else {
            String::new()
        };
        parts.push(format!(
            "{} {} events{skipped}",
            phase.stream(),
            c.applied.load(Ordering::Relaxed)
        ));
    }
    println!(
        "rebuilt the read model at {} from the log in {:.1} s: {}",
        model.url(),
        started.elapsed().as_secs_f64(),
        parts.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
