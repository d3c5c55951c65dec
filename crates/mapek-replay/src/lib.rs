//! mapek's replay: re-run the recorded log through the pure phase logic and compare.
//!
//! - [`verify()`]: analyze and plan again with the recorded policy, analyze configuration and
//!   knowledge; every symptom and decision must come out byte for byte the same.
//! - [`what_if()`]: the recorded symptoms through another policy, with knowledge limited to
//!   what existed before each symptom; a diff of the decisions.
//! - [`incident_story()`]: an incident as a timeline, from the telemetry to the outcome.
//! - [`shadow_diff()`]: the decisions candidate policies took beside the live one (shadow
//!   decisions), compared with the live decisions, and judged by the executor's interlocks.
//! - [`export()`]: a slice of the live log as a portable file ([`slice`](mod@slice)), which any of the
//!   above reads through [`Source::Slice`].
//!
//! Replay reads by direct gets (no consumer) and the config bucket only: it publishes nothing,
//! acknowledges nothing and calls no actuator.
//!
//! # Layout
//! - [`source`]: [`Source`], the live streams or a slice file, read in stream order.
//! - `merge`: one order for a phase stored in several streams (telemetry split over
//!   `MAPEK_MONITOR_0` …): by stored time, each stream's own order kept.
//! - [`record`]: [`Record`], one stored message, byte for byte.
//! - [`slice`](mod@slice): the slice file format, [`slice::SliceHeader`] and [`slice::SliceLine`].
//! - [`range`]: [`Range`] of event time and [`Bound`]s as users give them.
//! - `log`: the recorded symptoms and decisions, the policies, the plan replay.
//! - [`verify`](mod@verify): [`verify()`], [`VerifyReport`], [`Difference`].
//! - [`diff`]: field-by-field differences.
//! - [`whatif`]: [`what_if()`], [`WhatIfReport`].
//! - [`shadow`]: [`shadow_diff()`], [`ShadowReport`].
//! - [`story`]: [`incident_story()`], [`Story`].
//! - [`export`](mod@export): [`export()`].
//! - [`error`](mod@error): [`ReplayError`].

pub mod diff;
pub mod error;
pub mod export;
mod log;
mod merge;
pub mod range;
pub mod record;
pub mod shadow;
pub mod slice;
pub mod source;
pub mod story;
pub mod verify;
pub mod whatif;

pub use error::ReplayError;
pub use export::{ExportSummary, export};
pub use range::{Bound, Range};
pub use record::Record;
pub use shadow::{ShadowOptions, ShadowReport, shadow_diff};
pub use source::Source;
pub use story::{Stage, Story, incident_story};
pub use verify::{
    DiffKind, Difference, Progress, Tally, VerifyOptions, VerifyReport, verify, verify_with,
};
pub use whatif::{Candidate, Consult, WhatIfReport, what_if};
