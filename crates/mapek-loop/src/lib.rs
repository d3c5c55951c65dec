//! mapek's phase workers: the pure logic of `mapek-domain` wired to JetStream.
//!
//! A worker reads its phase's input through a durable [`mapek_bus::Inbox`], folds each event
//! into the phase's state, publishes what the phase emits (with deterministic ids, so a
//! retried publish is stored once), waits until those are stored, and only then acknowledges
//! its input. A crash at any point therefore redelivers input whose output may already be
//! stored, and the ids make the second copy a duplicate: nothing is lost, nothing doubled.
//!
//! # Layout
//! - [`stage`]: [`Stage`], a phase's pure step, and [`run_stage`], the worker loop.
//! - [`lease`]: partition leases, and [`lease::run_partitioned`], one stage per leased partition.
//! - [`analyze`]: telemetry → symptoms, with [`mapek_domain::Analyzer`].
//! - [`plan`]: symptoms → decisions, with [`mapek_domain::Planner`] and a knowledge view.
//! - [`execute`]: decisions → commands to node agents → action results, through
//!   [`mapek_domain::Interlocks`]; the approval gate and [`execute::approve`]; executors
//!   sharing the work through [`execute::SharedLeases`] (Redis, implemented in
//!   mapek-knowledge).
//! - [`metrics`]: the Prometheus metrics every worker keeps, and the `/metrics` endpoint.
//! - [`evaluate`]: action results and symptoms → outcomes, with [`mapek_domain::Evaluator`].
//! - [`retry`]: riding through a lost server: backoff, and retries logged and counted.
//! - [`runtime`]: the tokio runtime the workers run on, on half the cores by default.

pub mod analyze;
pub mod evaluate;
pub mod execute;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod retry;
pub mod runtime;
pub mod stage;

pub use stage::{Stage, StageConfig, StageStats, run_stage};
