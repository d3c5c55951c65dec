//! `mapek export`: a slice of the log as a portable file, for `mapek replay … --file`.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use mapek_domain::NodeId;
use mapek_replay::Range;

use crate::Settings;
use crate::time_arg::parse_ts_ms;

/// `mapek export` flags.
#[derive(Debug, Args)]
#[command(after_long_help = EXPORT_HELP)]
pub struct ExportArgs {
    /// The start of the range replays of the slice compare: RFC 3339 or Unix ms
    #[arg(long, value_name = "TIME", value_parser = parse_ts_ms)]
    from: Option<i64>,

    /// The end of the range: the slice holds the log up to it [default: everything]
    #[arg(long, value_name = "TIME", value_parser = parse_ts_ms)]
    to: Option<i64>,

    /// Only this node's partition (all the other nodes there shape its decisions)
    #[arg(long, value_name = "NODE")]
    node: Option<NodeId>,
}

const EXPORT_HELP: &str = "\
The slice is JSON Lines on stdout: a header (format, range, the recorded policies and analyze
settings), then one line per stored message with its body in base64, byte for byte. It holds
the log from the first message of each stream up to --to, because replay rebuilds state from
the start; --from only sets the range replays compare. Telemetry split over several streams
(MAPEK_MONITOR_0, ...; docs/adr/0012) keeps each stream's name and sequences, merged by stored
time. docs/replay.md describes the format.

Example:
  mapek export --from 2026-11-28T12:00:00Z --to 2026-11-28T12:05:00Z --node n17 > n17.slice
  mapek replay verify --file n17.slice";

/// Runs `mapek export`.
pub async fn run(args: ExportArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let range = Range {
        from_ms: args.from,
        to_ms: args.to,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let summary = mapek_replay::export(&js, range, args.node.as_ref(), &mut out).await?;
    out.flush()?;
    let counts: Vec<String> = summary
        .counts
        .iter()
        .map(|(stream, n)| format!("{n} from {stream}"))
        .collect();
    eprintln!("exported {}", counts.join(", "));
    Ok(ExitCode::SUCCESS)
}
