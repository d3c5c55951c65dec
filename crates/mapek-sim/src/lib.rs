//! A simulated mesh for mapek: seeded topology, scripted faults, and node agents that obey
//! the executor's commands, so the whole MAPE-K loop can run, and be tested, without a
//! network.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use mapek_sim::{Mesh, MeshConfig, default_script, run};
//!
//! let client = mapek_bus::connect_client("nats://127.0.0.1:4222").await?;
//! let js = mapek_bus::connect("nats://127.0.0.1:4222").await?;
//! let mesh = Mesh::new(MeshConfig::default(), 42)?.with_faults(&default_script(12))?;
//! let start_ms = 1_795_867_200_000;
//! let report = run(js, client, mesh, 1.0, start_ms, tokio::signal::ctrl_c()).await?;
//! println!("{} ticks, {} commands", report.ticks, report.commands);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: [`MeshConfig`], how big the mesh is and how healthy links behave.
//! - [`mesh`]: [`Mesh`], the pure model: `tick` makes telemetry, `apply` obeys a command.
//! - [`fault`]: [`FaultScript`] and [`Fault`], what goes wrong and when (`faults.toml`).
//! - [`run`](mod@run): [`run()`], publishing each tick and answering `mapek.cmd.*`.
//! - [`rng`]: SplitMix64, the seeded random source.

pub mod config;
pub mod fault;
pub mod mesh;
pub mod rng;
pub mod run;

pub use config::MeshConfig;
pub use fault::{Fault, FaultScript, default_script};
pub use mesh::Mesh;
pub use run::{RunReport, run, run_faster};

use thiserror::Error;

/// An error from the simulator.
#[derive(Debug, Error)]
pub enum SimError {
    /// A mesh config, or a fault that does not fit the mesh (unknown node, no such link).
    ///
    /// ### Handling
    /// Fatal at startup: fix the config or the fault file.
    #[error("simulator config: {0}")]
    Config(String),
    /// A fault file that cannot be read or parsed.
    ///
    /// ### Handling
    /// Fatal at startup; the message names the file and the position.
    #[error("fault file {file}: {detail}")]
    Faults {
        /// The file.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// The bus failed (subscribing to commands, publishing telemetry).
    ///
    /// ### Handling
    /// Fatal for the run: the message says what to do.
    #[error(transparent)]
    Bus(#[from] mapek_bus::BusError),
}
