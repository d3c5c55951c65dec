//! `mapek shadow`: how the candidate policies deciding beside the live one (`mapek run
//! --shadow-policy`) would have done.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use mapek_domain::NodeId;
use mapek_replay::{Range, ShadowOptions, Source};

use crate::Settings;
use crate::cmd::replay::{emit, emit_paged, source};
use crate::time_arg::{parse_since, parse_ts_ms, to_ms};

/// `mapek shadow` subcommands.
#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// Compare each candidate's shadow decisions with the live decisions: same, changed,
    /// and which the executor would have refused
    #[command(after_long_help = DIFF_HELP)]
    Diff(DiffArgs),
}

/// `mapek shadow diff`
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Compare the symptoms since this time: a duration before now (1h, 30m) or RFC 3339
    /// [default: everything the streams hold]
    #[arg(long, value_name = "TIME|DURATION", value_parser = parse_since, conflicts_with = "from")]
    since: Option<time::OffsetDateTime>,

    /// Compare from this event time (RFC 3339 or Unix ms)
    #[arg(long, value_name = "TIME", value_parser = parse_ts_ms)]
    from: Option<i64>,

    /// Compare up to this event time (RFC 3339 or Unix ms)
    #[arg(long, value_name = "TIME", value_parser = parse_ts_ms)]
    to: Option<i64>,

    /// Only the candidate policy of this name [default: every candidate found]
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,

    /// Only this node's symptoms
    #[arg(long, value_name = "NODE")]
    node: Option<NodeId>,

    /// Read a slice file from `mapek export` instead of the live streams
    #[arg(long, value_name = "SLICE")]
    file: Option<PathBuf>,

    /// Print the reports as JSON
    #[arg(long)]
    json: bool,
}

const DIFF_HELP: &str = "\
Each symptom decided on under the live policy or a candidate is paired by its id: the same
action, another one (changed), or a decision under one policy only. A candidate's decision
the executor would have refused is marked with the reason: its decisions go through the
executor's interlocks ([execute] of the config file), with its own blast radius over the
mesh's reporting nodes, as if it were live. Symptoms a candidate has not reached yet are left
out and counted. docs/policy.md tells how to promote a candidate.

Examples:
  mapek run --shadow-policy policies/cautious.toml
  mapek shadow diff --since 1h
  mapek shadow diff --policy cautious --json";

/// Runs `mapek shadow`.
pub async fn run(command: ShadowCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        ShadowCommand::Diff(args) => diff(args, settings).await,
    }
}

async fn diff(args: DiffArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let source = source(args.file.as_ref(), settings).await?;
    let given = Range {
        from_ms: args.since.map(to_ms).or(args.from),
        to_ms: args.to,
    };
    let options = ShadowOptions {
        range: given.or(source.default_range()),
        node: args.node,
        policy: args.policy,
        execute: settings.file.execute.clone(),
        mesh_nodes: mesh_nodes(&source).await?,
    };
    let reports = mapek_replay::shadow_diff(&source, &options).await?;
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&reports)?))?;
    } else {
        let text: Vec<String> = reports.iter().map(ToString::to_string).collect();
        emit_paged(&text.join("\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How many nodes report telemetry: on the live streams, as the executor counts them; in a
/// slice, the nodes its telemetry comes from.
async fn mesh_nodes(source: &Source) -> anyhow::Result<usize> {
    match source {
        Source::Live(js) => Ok(mapek_bus::streams::count_reporting_nodes(js).await?),
        Source::Slice(_) => {
            let mut nodes = std::collections::BTreeSet::new();
            source
                .each(mapek_domain::Phase::Monitor, None, |r| {
                    if let Some((_, node)) = r.subject.rsplit_once('.') {
                        nodes.insert(node.to_owned());
                    }
                })
                .await?;
            Ok(nodes.len())
        }
    }
}
