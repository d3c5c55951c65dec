//! `mapek approve`: let a held action go ahead.

use std::process::ExitCode;

use clap::Args;

use crate::Settings;

/// `mapek approve`
#[derive(Debug, Args)]
#[command(after_long_help = APPROVE_HELP)]
pub struct ApproveArgs {
    /// The decision id (the `decision_id` that `mapek subscribe decisions --json` shows)
    decision: String,

    /// Who approves, recorded with the approval [default: $USER]
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
}

const APPROVE_HELP: &str = "\
With require_approval set in [execute] of the config file, the executor holds every action
(or the kinds listed) until it is approved. Held actions show in the executor's log; their
decisions in `mapek subscribe decisions`. Approving records the approver in the MAPEK_APPROVALS
key-value bucket, and the executor applies the action within about a second.";

/// Runs `mapek approve`.
pub async fn run(args: ApproveArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let by = args
        .by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    mapek_loop::execute::approve(&js, &args.decision, &by).await?;
    println!("approved {} (by {by})", args.decision);
    Ok(ExitCode::SUCCESS)
}
