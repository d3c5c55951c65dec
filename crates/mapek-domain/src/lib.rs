//! mapek's events and the pure logic of the MAPE-K phases.
//!
//! This crate does no I/O: no network, no clock, no randomness. Everything that crosses a
//! subject is defined here, so every other crate (codec, bus, CLI, workers, replay) agrees on
//! one set of types, and the phase logic can be replayed from the log and come out the same.
//!
//! # Layout
//! - [`node`]: [`NodeId`], the validated name of a mesh node.
//! - [`id`]: deterministic event ids, hashed from what an event is about.
//! - [`phase`]: the MAPE-K [`Phase`]s and the subjects they publish on.
//! - [`event`]: the events themselves ([`Telemetry`], [`Symptom`], [`Decision`],
//!   [`ActionResult`], [`Outcome`], [`Rejected`]) and the [`Event`] trait they share.
//! - [`invalid`]: [`Invalid`], why an event was refused before it reached a subject.
//! - [`analyze`]: the analyze phase, [`Analyzer`]: per-node windows, detectors and
//!   hysteresis that turn telemetry into symptoms.
//! - [`plan`]: the plan phase, [`Planner`]: a TOML [`Policy`], cooldowns and blast radius
//!   from past decisions, and past incidents ([`KnowledgeView`]) turn symptoms into decisions.
//! - [`execute`]: the execute phase, [`Interlocks`] (lease, cooldown, rate limit, blast
//!   radius, dry run, approval) and [`Evaluator`], which turns applied actions into outcomes.

pub mod analyze;
pub mod event;
pub mod execute;
pub mod id;
pub mod invalid;
pub mod node;
pub mod phase;
pub mod plan;

pub use analyze::{AnalyzeConfig, Analyzer};
pub use event::{
    Action, ActionKind, ActionResult, ActionStatus, Decision, Event, LinkSample, Neighbour,
    Outcome, OutcomeResult, Rejected, ShadowDecision, Symptom, SymptomKind, SymptomState,
    Telemetry,
};
pub use execute::{Evaluator, ExecuteConfig, Interlocks};
pub use id::EventId;
pub use invalid::Invalid;
pub use node::NodeId;
pub use phase::{Phase, TELEMETRY_MAPPING, telemetry_mapping};
pub use plan::{KnowledgeView, Planner, Policy};

/// The largest encoded event mapek accepts, in bytes.
///
/// NATS's default `max_payload` (1 MiB) counts headers and body together, and the streams
/// allow 1 MiB messages; 1000 KiB leaves room for the headers, so an event that passes this
/// check is never refused by the server for its size.
pub const MAX_EVENT_BYTES: usize = 1000 * 1024;
