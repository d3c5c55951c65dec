//! The events that cross mapek's subjects.
//!
//! Each type here has an Avro schema of the same shape in `schemas/` (field names and types
//! match one to one), and implements [`Event`], which tells the bus where to publish it and
//! how to check it. Maps are `BTreeMap`s so that iterating one never depends on a hasher's
//! seed: the determinism contract forbids unordered iteration that reaches the output.

/// Writes the getters of [`Event`] that only read a field, inside an `impl Event`: the id
/// field's name, then, for an event in an incident, its correlation and causation fields.
/// Every event has `node` and `ts_ms` fields of those names.
macro_rules! fields {
    (id: $id:ident $(, correlation: $correlation:ident, causation: $causation:ident)?) => {
        fn event_id(&self) -> &str {
            &self.$id
        }

        fn node(&self) -> &$crate::NodeId {
            &self.node
        }

        $(
            fn correlation(&self) -> Option<&str> {
                Some(&self.$correlation)
            }

            fn causation(&self) -> Option<&str> {
                Some(&self.$causation)
            }
        )?

        fn ts_ms(&self) -> i64 {
            self.ts_ms
        }
    };
}

mod decision;
mod rejected;
mod result;
mod shadow;
mod symptom;
mod telemetry;

pub use decision::{Action, ActionKind, Decision, Neighbour};
pub use rejected::{MAX_KEPT_BYTES, Rejected};
pub use result::{
    ActionResult, ActionStatus, Outcome, OutcomeResult, escalation_in_words, with_escalation,
};
pub use shadow::ShadowDecision;
pub use symptom::{Symptom, SymptomKind, SymptomState};
pub use telemetry::{LinkSample, MAX_LINKS, MAX_METRICS, Telemetry};

use crate::{Invalid, NodeId, Phase};

/// What every event on a mapek subject offers.
pub trait Event {
    /// The Avro schema name without namespace (`Telemetry`), as in `schemas/`.
    const SCHEMA: &'static str;
    /// The phase whose subject family carries it.
    const PHASE: Phase;

    /// The event id, used as `Nats-Msg-Id` so a retried publish is stored once.
    fn event_id(&self) -> &str;
    /// The node it is about; it picks the subject `mapek.<phase>.<node>`.
    fn node(&self) -> &NodeId;
    /// The incident it belongs to, if any (`Mapek-Correlation`).
    fn correlation(&self) -> Option<&str> {
        None
    }
    /// The id of the event that caused it, if any (`Mapek-Causation`).
    fn causation(&self) -> Option<&str> {
        None
    }
    /// Its time, in milliseconds since the Unix epoch (event time, never the wall clock).
    fn ts_ms(&self) -> i64;
    /// Checks the rules a schema cannot express (finite numbers, ranges, names).
    fn validate(&self) -> Result<(), Invalid>;
}

/// Checks that a number is finite.
pub(crate) fn finite(field: &str, value: f64) -> Result<(), Invalid> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Invalid::NotFinite {
            field: field.to_owned(),
            value,
        })
    }
}

/// Checks that a fraction lies in 0..=1.
pub(crate) fn fraction(field: &str, value: f64) -> Result<(), Invalid> {
    finite(field, value)?;
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(Invalid::OutOfRange {
            field: field.to_owned(),
            value,
            range: "between 0 and 1",
        })
    }
}

/// Checks that a required text field is set.
pub(crate) fn non_empty(field: &'static str, value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        Err(Invalid::Empty { field })
    } else {
        Ok(())
    }
}

/// Checks a name (metric, service, parameter): `[A-Za-z0-9_.-]{1,64}`.
pub(crate) fn name(field: &'static str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::Name {
            field,
            name: value.to_owned(),
            why: "must be 1 to 64 letters, digits, '_', '.' or '-'",
        })
    }
}

/// Checks that a collection is not longer than `max`.
pub(crate) fn at_most(field: &'static str, len: usize, max: usize) -> Result<(), Invalid> {
    if len > max {
        Err(Invalid::TooMany { field, len, max })
    } else {
        Ok(())
    }
}
