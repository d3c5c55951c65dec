//! `mapek`: the MAPE-K loop's one command.
//!
//! The binary parses configuration and wires parts together (`cmd`, one module per
//! subcommand); the work is in the library crates, which docs/architecture.md maps:
//! - `mapek-domain`: the events, node ids and phases, and the pure logic of analyze, plan,
//!   execute (the interlocks) and evaluate.
//! - `mapek-codec`: the Avro schemas, their fingerprints, single-object encoding.
//! - `mapek-bus`: JetStream: streams, partitions, publishing, subscribing, the workers'
//!   inboxes, dead letters, buckets, the actuator's commands.
//! - `mapek-loop`: the phase workers, their leases and metrics; executors sharing the work
//!   through its `SharedLeases` trait.
//! - `mapek-knowledge`: the SQL read model and its projections; Redis (hot state, and the
//!   executors' `SharedLeases`).
//! - `mapek-vectors`: the incident index (qdrant-edge or a Qdrant server), its projection,
//!   the planner's knowledge view.
//! - `mapek-replay`: verify, what-if, shadow diff, incident stories, slice files.
//! - `mapek-audit`: decision and result keys, signatures, chains and their witness, the audit.
//! - `mapek-sim`: the seeded simulated mesh and its node agents.
//! - `mapek-testkit`: real servers and sample events (past incidents' among them), for tests
//!   only.

mod cmd;
mod config;
mod embedded;
mod otel;
mod shutdown;
mod time_arg;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{DEFAULT_NATS_URL, FileConfig};

/// mimalloc instead of the system allocator: decoding and routing every event allocates a
/// little, and glibc's malloc was a fifth of the loop's time (ADR 0009).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An event-sourced MAPE-K autonomic loop for mesh networks.
///
/// Node telemetry flows through NATS JetStream, one subject family per phase
/// (monitor → analyze → plan → execute → knowledge). Settings come from a TOML file, then
/// MAPEK_* environment variables, then flags, the later winning.
#[derive(Debug, Parser)]
#[command(
    name = "mapek",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The config file [default: ./mapek.toml if it exists]
    #[arg(long, global = true, env = "MAPEK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// The NATS server, or several servers of one cluster, comma-separated
    /// (nats://a:4222,nats://b:4222) [default: nats://127.0.0.1:4222, or nats.url in the
    /// config file]. Secured as the NATS tools are: NATS_CA (TLS), NATS_CERT and NATS_KEY
    /// (mutual TLS), NATS_CREDS, NATS_USER and NATS_PASSWORD, NATS_TOKEN; NATS_INBOX_PREFIX
    /// gives the identity's own reply subjects
    #[arg(long, global = true, env = "MAPEK_NATS_URL", value_name = "URL")]
    nats_url: Option<String>,

    /// What to log to stderr, as a tracing filter (error, warn, info, debug, mapek_bus=debug);
    /// qdrant-edge's start-up warnings are hidden by default
    #[arg(
        long,
        global = true,
        env = "MAPEK_LOG",
        default_value = "warn,qdrant_edge=error",
        value_name = "FILTER"
    )]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the JetStream streams
    #[command(subcommand)]
    Streams(cmd::streams::StreamsCommand),
    /// Publish telemetry, from flags or JSON lines on stdin
    Publish(cmd::publish::PublishArgs),
    /// Follow a subject family live, or from a time or a sequence
    Subscribe(cmd::subscribe::SubscribeArgs),
    /// Run the loop's workers: every phase, or one
    Run(cmd::run::RunArgs),
    /// Run the simulated mesh alone, against any running loop
    Sim(cmd::sim::SimArgs),
    /// The whole loop on a simulated mesh, with an embedded nats-server
    Demo(cmd::demo::DemoArgs),
    /// Approve an action the executor holds for approval
    Approve(cmd::approve::ApproveArgs),
    /// The mesh at a glance: nodes by health, open incidents, recent actions
    Status(cmd::status::StatusArgs),
    /// Query and rebuild the knowledge: similar past incidents, projections from the log
    #[command(subcommand)]
    Knowledge(cmd::knowledge::KnowledgeCommand),
    /// Replay recorded events: verify decisions, backtest a policy, tell an incident's story
    #[command(subcommand)]
    Replay(cmd::replay::ReplayCommand),
    /// Compare the decisions of candidate policies run beside the live one (shadow policies)
    #[command(subcommand)]
    Shadow(cmd::shadow::ShadowCommand),
    /// Write a slice of the log to a portable file, for replay elsewhere
    Export(cmd::export::ExportArgs),
    /// Sign and prove decisions: the decision key, and checking the whole decision log
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
}

/// Settings resolved from the file, the environment and the flags.
pub struct Settings {
    /// The NATS URL.
    pub nats_url: String,
    /// Whether a flag, the environment or the config file named it (the demo starts its own
    /// server otherwise).
    pub nats_url_given: bool,
    /// The config file's contents.
    pub file: FileConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match mapek_loop::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = FileConfig::load(cli.config.as_deref())?;
    let given = cli.nats_url.or_else(|| file.nats.url.clone());
    let settings = Settings {
        nats_url_given: given.is_some(),
        nats_url: given.unwrap_or_else(|| DEFAULT_NATS_URL.to_owned()),
        file,
    };
    match cli.command {
        Command::Streams(c) => cmd::streams::run(c, &settings).await,
        Command::Publish(a) => cmd::publish::run(a, &settings).await,
        Command::Subscribe(a) => cmd::subscribe::run(a, &settings).await,
        Command::Run(a) => cmd::run::run(a, &settings).await,
        Command::Sim(a) => cmd::sim::run(a, &settings).await,
        Command::Demo(a) => cmd::demo::run(a, &settings).await,
        Command::Approve(a) => cmd::approve::run(a, &settings).await,
        Command::Status(a) => cmd::status::run(a, &settings).await,
        Command::Knowledge(c) => cmd::knowledge::run(c, &settings).await,
        Command::Replay(c) => cmd::replay::run(c, &settings).await,
        Command::Shadow(c) => cmd::shadow::run(c, &settings).await,
        Command::Export(a) => cmd::export::run(a, &settings).await,
        Command::Audit(c) => cmd::audit::run(c, &settings).await,
    }
}
