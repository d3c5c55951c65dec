//! `mapek subscribe`: follow a subject family.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use mapek_bus::{Family, StartAt, Subscriber, SubscriberConfig};
use mapek_codec::AvroEvent;
use mapek_domain::{
    ActionResult, Decision, NodeId, Outcome, Rejected, ShadowDecision, Symptom, Telemetry,
};

use super::render::Render;
use crate::Settings;
use crate::time_arg::parse_since;

/// The families, as the command line names them.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FamilyArg {
    /// Node telemetry (mapek.monitor.>)
    Telemetry,
    /// Symptoms found by analyze (mapek.analyze.>)
    Symptoms,
    /// Decisions taken by plan (mapek.plan.>)
    Decisions,
    /// Results of actions (mapek.execute.>)
    Actions,
    /// Outcomes of actions (mapek.knowledge.>)
    Outcomes,
    /// Decisions of candidate policies run beside the live one, never executed
    /// (mapek.shadow.>)
    Shadow,
    /// Dead letters: messages a consumer refused (mapek.dlq.>)
    Rejected,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Self {
        match f {
            FamilyArg::Telemetry => Family::Telemetry,
            FamilyArg::Symptoms => Family::Symptoms,
            FamilyArg::Decisions => Family::Decisions,
            FamilyArg::Actions => Family::Actions,
            FamilyArg::Outcomes => Family::Outcomes,
            FamilyArg::Shadow => Family::Shadow,
            FamilyArg::Rejected => Family::Rejected,
        }
    }
}

/// `mapek subscribe`
#[derive(Debug, Args)]
#[command(after_long_help = SUBSCRIBE_HELP)]
pub struct SubscribeArgs {
    /// What to follow
    #[arg(value_enum)]
    family: FamilyArg,

    /// Start from this time: RFC 3339 (2026-11-28T12:00:00Z) or a duration ago (10m, 1h30m)
    /// [default: only new events]
    #[arg(long, value_name = "TIME", value_parser = parse_since, group = "start")]
    since: Option<time::OffsetDateTime>,

    /// Start from this stream sequence (of telemetry split over streams: give --node too, the
    /// node's stream is the one meant)
    #[arg(long, value_name = "SEQ", group = "start")]
    seq: Option<u64>,

    /// Start from the oldest event the stream holds
    #[arg(long, group = "start")]
    all: bool,

    /// Only this node's events
    #[arg(long, value_name = "NODE")]
    node: Option<NodeId>,

    /// Print JSON lines ({"seq","subject","stored","event"}) instead of a table
    #[arg(long)]
    json: bool,

    /// Stop once every stored event has been printed and none came for --idle
    #[arg(long)]
    until_idle: bool,

    /// How long "idle" is, for --until-idle
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    idle: Duration,

    /// Stop after this many events
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

const SUBSCRIBE_HELP: &str = "\
Examples:
  mapek subscribe decisions                      follow decisions as they are taken
  mapek subscribe telemetry --node n17 --since 10m
  mapek subscribe decisions --all --json --until-idle > decisions.jsonl

A message that does not decode is shown with the reason and the stream goes on; a subscriber
never acknowledges or dead-letters anything. Ctrl-C stops it.";

/// Runs `mapek subscribe`.
pub async fn run(args: SubscribeArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let start = match (args.since, args.seq, args.all) {
        (Some(t), _, _) => StartAt::Since(t),
        (_, Some(seq), _) => StartAt::Sequence(seq),
        (_, _, true) => StartAt::All,
        _ => StartAt::New,
    };
    let config = SubscriberConfig {
        node: args.node.clone(),
        start,
    };
    match Family::from(args.family) {
        Family::Telemetry => follow::<Telemetry>(&js, config, &args).await,
        Family::Symptoms => follow::<Symptom>(&js, config, &args).await,
        Family::Decisions => follow::<Decision>(&js, config, &args).await,
        Family::Actions => follow::<ActionResult>(&js, config, &args).await,
        Family::Outcomes => follow::<Outcome>(&js, config, &args).await,
        Family::Shadow => follow::<ShadowDecision>(&js, config, &args).await,
        Family::Rejected => follow::<Rejected>(&js, config, &args).await,
    }
}

async fn follow<E: AvroEvent + Render>(
    js: &mapek_bus::JetStream,
    config: SubscriberConfig,
    args: &SubscribeArgs,
) -> anyhow::Result<ExitCode> {
    let mut subscriber = Subscriber::<E>::open(js, config).await?;
    let mut caught_up = subscriber.pending_at_start() == 0;
    let mut shown = 0u64;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "{}", E::header())?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while args.count.is_none_or(|n| shown < n) {
        let idle = tokio::time::sleep(args.idle);
        let received = tokio::select! {
            r = subscriber.next() => r,
            _ = idle, if args.until_idle && caught_up => break,
            _ = &mut ctrl_c => break,
        };
        let Some(received) = received else { break };
        let received = received?;
        caught_up = received.pending == 0;
        shown += 1;
        let line = if args.json {
            super::render::json_line(&received)
        } else {
            super::render::table_line(&received)
        };
        if writeln!(out, "{line}").is_err() {
            // The reader went away (`| head`): stop quietly.
            break;
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}
