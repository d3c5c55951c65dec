//! `mapek sim`: the simulated mesh alone, against any running loop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use mapek_sim::{FaultScript, Mesh, MeshConfig, default_script};

use crate::Settings;
use crate::shutdown::Shutdown;
use crate::time_arg::{now_ms, parse_ts_ms};

/// `mapek sim`
#[derive(Debug, Args)]
#[command(after_long_help = SIM_HELP)]
pub struct SimArgs {
    /// How many nodes (named n0 .. n{N-1})
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,

    /// Telemetry samples per node per second
    #[arg(long, default_value_t = 1.0)]
    pub hz: f64,

    /// The fault script (see crates/mapek-sim/faults.example.toml) [default: no faults]
    #[arg(long, value_name = "FILE", conflicts_with = "demo_faults")]
    pub faults: Option<PathBuf>,

    /// Use the demo's script: one fault of each kind, 20 s apart
    #[arg(long)]
    pub demo_faults: bool,

    /// The seed of the topology and the noise: the same seed, start and commands repeat a run
    /// exactly
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// The event time of the first tick, RFC 3339 or Unix ms [default: now]
    #[arg(long, value_name = "TIME", value_parser = parse_ts_ms)]
    pub start: Option<i64>,

    /// Stop after this long (90s, 10m) [default: run until Ctrl-C]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

const SIM_HELP: &str = "\
The simulated nodes publish telemetry on mapek.monitor.<node> and obey commands on
mapek.cmd.<node>: a reroute around a bad link really lowers the node's loss, a restart really
clears a hung service.

Examples:
  mapek sim --nodes 1000 --hz 10 --faults faults.toml
  mapek sim --demo-faults --seed 7 --duration 2m";

/// Builds the mesh of `args`.
pub fn mesh(args: &SimArgs) -> anyhow::Result<Mesh> {
    let config = MeshConfig {
        nodes: args.nodes,
        ..MeshConfig::default()
    };
    let script = match (&args.faults, args.demo_faults) {
        (Some(path), _) => FaultScript::load(path)?,
        (None, true) => default_script(args.nodes),
        (None, false) => FaultScript::default(),
    };
    Ok(Mesh::new(config, args.seed)?.with_faults(&script)?)
}

/// Runs `mapek sim`.
pub async fn run(args: SimArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let mesh = mesh(&args)?;
    let client = mapek_bus::connect_client(&settings.nats_url).await?;
    let js = mapek_bus::connect(&settings.nats_url).await?;
    let start = args.start.unwrap_or_else(now_ms);
    eprintln!(
        "mapek sim: {} nodes at {} Hz, seed {}; Ctrl-C stops",
        args.nodes, args.hz, args.seed
    );
    let shutdown = Shutdown::on_ctrl_c(args.duration);
    let report = mapek_sim::run(js, client, mesh, args.hz, start, shutdown.wait()).await?;
    println!(
        "simulated {} ticks: {} telemetry events stored, {} not acknowledged; {} commands, {} refused",
        report.ticks,
        report.published.acked + report.published.duplicates,
        report.published.failed,
        report.commands,
        report.refused
    );
    Ok(if report.published.all_acked() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
