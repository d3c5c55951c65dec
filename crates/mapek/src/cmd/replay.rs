//! `mapek replay`: verify recorded decisions, backtest a policy, tell an incident's story.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use mapek_domain::plan::NoKnowledge;
use mapek_domain::{AnalyzeConfig, KnowledgeView, NodeId, Phase, Policy};
use mapek_replay::{Bound, Candidate, Consult, Progress, Range, Source, VerifyOptions};
use mapek_vectors::{IncidentIndex, IndexKnowledge};

use crate::Settings;
use crate::time_arg::parse_ts_ms;

/// `mapek replay` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Run analyze and plan again over the log; every symptom and decision must come out
    /// byte for byte as recorded (exit 1 if not)
    #[command(after_long_help = VERIFY_HELP)]
    Verify(VerifyArgs),
    /// Run the recorded symptoms through another policy and show how the decisions change
    WhatIf(WhatIfArgs),
    /// Tell an incident's story: telemetry, symptoms, decision, interlocks, action, outcome
    Incident(IncidentArgs),
}

/// Which part of which log.
#[derive(Debug, Args)]
pub struct RangeArgs {
    /// Compare from this event time: RFC 3339, Unix ms, or the time of the telemetry at a
    /// stream sequence: of MAPEK_MONITOR (`seq:1200`, or a number below 100000000000), or of a
    /// named telemetry stream when the server splits telemetry (`MAPEK_MONITOR_1:1200`)
    #[arg(long, value_name = "TIME|SEQ", value_parser = parse_bound)]
    from: Option<Bound>,

    /// Compare up to this event time (same forms as --from)
    #[arg(long, value_name = "TIME|SEQ", value_parser = parse_bound)]
    to: Option<Bound>,

    /// Compare only this node's symptoms and decisions
    #[arg(long, value_name = "NODE")]
    node: Option<NodeId>,

    /// Read a slice file from `mapek export` instead of the live streams
    #[arg(long, value_name = "SLICE")]
    file: Option<PathBuf>,
}

/// `mapek replay verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    range: RangeArgs,

    /// A policy file some decisions were taken under but whose text was not recorded
    #[arg(long, value_name = "FILE")]
    policy: Vec<PathBuf>,

    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// `mapek replay what-if`
#[derive(Debug, Args)]
pub struct WhatIfArgs {
    /// The candidate policy file
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,

    /// Candidate analyze settings (a TOML file: an `[analyze]` table as in mapek.toml, or
    /// its fields alone): the symptoms are found again in the recorded telemetry with them
    /// [default: the recorded symptoms]
    #[arg(long, value_name = "FILE")]
    analyze: Option<PathBuf>,

    /// A Qdrant server (gRPC) holding the incident index [default: the embedded index under
    /// the data directory, if there is one]
    #[arg(long, env = "QDRANT_URL", value_name = "URL")]
    qdrant_url: Option<String>,

    /// The directory of the embedded stores (default ./mapek-data)
    #[arg(long, env = "MAPEK_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Consult no incident index for the symptoms the live run did not decide on
    #[arg(long, conflicts_with = "consult_index")]
    no_knowledge: bool,

    /// Every symptom consults the incident index as it stands now, as of the symptom's
    /// time, instead of what its recorded decision consulted: a backtest with all the
    /// knowledge the index has gathered since, none of it from after a symptom
    #[arg(long)]
    consult_index: bool,

    #[command(flatten)]
    range: RangeArgs,

    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// `mapek replay incident`
#[derive(Debug, Args)]
pub struct IncidentArgs {
    /// The incident id (a symptom's or decision's `incident_id`)
    id: String,

    /// Read a slice file instead of the live streams
    #[arg(long, value_name = "SLICE")]
    file: Option<PathBuf>,

    /// Print the story as JSON
    #[arg(long)]
    json: bool,
}

const VERIFY_HELP: &str = "\
Each stream is replayed from its first message, because the analyzers' windows and the
planners' cooldowns reach back; --from/--to/--node only choose what is compared. Replay reads
by direct gets, with no consumer: it publishes nothing and acts on nothing. docs/replay.md has
more.

A sequence given to --from/--to names telemetry in one stream. When the server splits
telemetry over several streams (MAPEK_MONITOR_0, MAPEK_MONITOR_1, ...; docs/adr/0012) each has
its own sequences, so a bare sequence is refused: give a time, or name the stream, as in
--from MAPEK_MONITOR_1:1200.

Examples:
  mapek replay verify
  mapek replay verify --from 2026-11-28T12:00:00Z --to 2026-11-28T13:00:00Z --node n17
  mapek export --to 2026-11-28T13:00:00Z > incident.slice
  mapek replay verify --file incident.slice";

fn parse_bound(s: &str) -> Result<Bound, String> {
    // `MAPEK_MONITOR_1:1200`: no time starts with a letter.
    if let Some((stream, seq)) = s.rsplit_once(':')
        && stream.starts_with("MAPEK_")
    {
        if mapek_bus::layout::phase_of_stream(stream) != Some(Phase::Monitor) {
            return Err(format!(
                "{s:?}: a sequence must be of a telemetry stream (MAPEK_MONITOR, \
                 MAPEK_MONITOR_<n>)"
            ));
        }
        return seq
            .parse()
            .map(|seq| Bound::StreamSeq {
                stream: stream.to_owned(),
                seq,
            })
            .map_err(|_| format!("{s:?}: {stream}: takes a stream sequence, a whole number"));
    }
    if let Some(seq) = s.strip_prefix("seq:") {
        return seq
            .parse()
            .map(Bound::Seq)
            .map_err(|_| format!("{s:?}: seq: takes a stream sequence, a whole number"));
    }
    match s.parse::<u64>() {
        Ok(n) if n < 100_000_000_000 => Ok(Bound::Seq(n)),
        _ => parse_ts_ms(s).map(Bound::Time),
    }
}

/// The slice file at `file`, else the live streams.
pub(crate) async fn source(file: Option<&PathBuf>, settings: &Settings) -> anyhow::Result<Source> {
    match file {
        Some(path) => Ok(Source::file(path)?),
        None => Ok(Source::live(mapek_bus::connect(&settings.nats_url).await?)),
    }
}

async fn range(args: &RangeArgs, source: &Source) -> anyhow::Result<Range> {
    let given = Range {
        from_ms: match &args.from {
            Some(b) => Some(source.resolve(b.clone()).await?),
            None => None,
        },
        to_ms: match &args.to {
            Some(b) => Some(source.resolve(b.clone()).await?),
            None => None,
        },
    };
    Ok(given.or(source.default_range()))
}

/// Reads and checks the policy file at `path`.
pub(crate) fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the policy {}", path.display()))?;
    Policy::parse(&text).with_context(|| format!("policy {}", path.display()))
}

/// Runs `mapek replay`.
pub async fn run(command: ReplayCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        ReplayCommand::Verify(args) => verify(args, settings).await,
        ReplayCommand::WhatIf(args) => what_if(args, settings).await,
        ReplayCommand::Incident(args) => incident(args, settings).await,
    }
}

async fn verify(args: VerifyArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let source = source(args.range.file.as_ref(), settings).await?;
    let range = range(&args.range, &source).await?;
    let options = VerifyOptions {
        node: args.range.node.clone(),
        policies: args
            .policy
            .iter()
            .map(|p| read_policy(p))
            .collect::<Result<_, _>>()?,
        plan_only: false,
    };
    let tty = std::io::stderr().is_terminal();
    let mut progress = |p: Progress| {
        if tty {
            eprint!("\r{}", progress_line(p));
        }
    };
    let report = mapek_replay::verify_with(&source, range, &options, &mut progress).await?;
    if tty {
        eprintln!();
    }
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        emit(&report.to_string())?;
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `verify: 412000/1000000 telemetry  210000/s  ETA 3s`
fn progress_line(p: Progress) -> String {
    let secs = p.elapsed.as_secs_f64().max(1e-3);
    let rate = p.done as f64 / secs;
    let left = p.total.saturating_sub(p.done) as f64 / rate.max(1.0);
    format!(
        "verify: {}/{} telemetry  {:.0}/s  ETA {:.0}s   ",
        p.done, p.total, rate, left
    )
}

async fn what_if(args: WhatIfArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let policy = read_policy(&args.policy)?;
    let source = source(args.range.file.as_ref(), settings).await?;
    let range = range(&args.range, &source).await?;
    // Symptoms the live run decided on consult what their decision recorded (ADR 0005); the
    // others ask the incident index, which answers only with incidents whose outcome was
    // known before the symptom (the KnowledgeView contract).
    let index = if args.no_knowledge {
        None
    } else {
        incident_index(&args, settings).await
    };
    if args.consult_index && index.is_none() {
        anyhow::bail!(
            "--consult-index: no incident index to consult; set QDRANT_URL, or --data-dir to \
             where one is (`mapek knowledge rebuild` makes one from the log)"
        );
    }
    let knowledge: Box<dyn KnowledgeView> = match &index {
        Some(index) => {
            eprintln!(
                "what-if: undecided symptoms consult the incident index at {}, as of each \
                 symptom's time",
                index.location()
            );
            Box::new(IndexKnowledge::new(index.clone()))
        }
        None => Box::new(NoKnowledge),
    };
    let analyze = args.analyze.as_deref().map(read_analyze).transpose()?;
    let candidate = Candidate {
        policy: &policy,
        analyze: analyze.as_ref(),
        consult: if args.consult_index {
            Consult::Index
        } else {
            Consult::Recorded
        },
    };
    let report = mapek_replay::what_if(
        &source,
        range,
        args.range.node.as_ref(),
        &candidate,
        knowledge.as_ref(),
    )
    .await?;
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        emit_paged(&report.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to stdout, through `$PAGER` (else `less -FRX`) when stdout is a terminal
/// and the text is longer than a screen; straight to stdout when the pager cannot start.
pub(crate) fn emit_paged(text: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    use std::process::{Command, Stdio};
    const SCREEN: usize = 40;
    if !std::io::stdout().is_terminal() || text.lines().count() <= SCREEN {
        return emit(text);
    }
    let pager = std::env::var("PAGER").unwrap_or_else(|_| "less -FRX".into());
    let child = Command::new("sh")
        .args(["-c", &pager])
        .stdin(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return emit(text);
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A pager quit early closes its input: the rest is not wanted.
        let _ = stdin.write_all(text.as_bytes());
    }
    child.wait().context("the pager failed")?;
    Ok(())
}

/// Reads candidate analyze settings: a file with an `[analyze]` table, or the table's fields.
fn read_analyze(path: &Path) -> anyhow::Result<AnalyzeConfig> {
    let what = || format!("analyze settings {}", path.display());
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the analyze settings {}", path.display()))?;
    let mut file: toml::Table = toml::from_str(&text).with_context(what)?;
    let table = match file.remove("analyze") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => anyhow::bail!("{}: `analyze` is not a table", what()),
        None => file,
    };
    let config: AnalyzeConfig = table.try_into().with_context(what)?;
    config.validate().with_context(what)?;
    Ok(config)
}

/// The incident index what-if consults: the server, or the embedded index if one exists
/// (never creating one). One that cannot be opened (another process holds the embedded
/// index) is a warning: what-if then runs without it.
async fn incident_index(
    args: &WhatIfArgs,
    settings: &Settings,
) -> Option<std::sync::Arc<dyn IncidentIndex>> {
    let k = &settings.file.knowledge;
    let url = args.qdrant_url.clone().or_else(|| k.qdrant_url.clone());
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| k.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("mapek-data"));
    if url.is_none() && !mapek_vectors::EdgeIndex::default_dir(&data_dir).exists() {
        return None;
    }
    match mapek_vectors::open(url.as_deref(), &data_dir).await {
        Ok(index) => Some(index),
        Err(e) => {
            eprintln!("warning: what-if runs without the incident index: {e}");
            None
        }
    }
}

async fn incident(args: IncidentArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let source = source(args.file.as_ref(), settings).await?;
    let story = mapek_replay::incident_story(&source, &args.id).await?;
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&story)?))?;
    } else {
        emit(&story.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_is_a_time_a_sequence_or_a_streams_sequence() {
        assert_eq!(parse_bound("seq:1200"), Ok(Bound::Seq(1200)));
        assert_eq!(parse_bound("1200"), Ok(Bound::Seq(1200)));
        assert_eq!(
            parse_bound("MAPEK_MONITOR_1:1200"),
            Ok(Bound::StreamSeq {
                stream: "MAPEK_MONITOR_1".into(),
                seq: 1200
            })
        );
        assert!(matches!(
            parse_bound("2026-11-28T12:00:00Z"),
            Ok(Bound::Time(_))
        ));
        assert!(parse_bound("MAPEK_PLAN:3").is_err());
        assert!(parse_bound("MAPEK_MONITOR_1:x").is_err());
    }
}
