//! Why an event was refused before it reached a subject.

use thiserror::Error;

/// An event that breaks one of mapek's rules. The message names the field and the rule, so it
/// can be shown to a user as it is.
///
/// ### Handling
/// Never retried: the same input fails the same way. A publisher reports it to its caller; a
/// consumer dead-letters the message with this text as the reason.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum Invalid {
    /// A node id outside `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid node id {id:?}: {why}")]
    NodeId {
        /// The id as given.
        id: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A number that is NaN or infinite, which no detector can compare.
    #[error("{field} is {value}, but must be a finite number")]
    NotFinite {
        /// The field or metric name.
        field: String,
        /// The value as given.
        value: f64,
    },
    /// A number outside the range its field allows.
    #[error("{field} is {value}, but must be {range}")]
    OutOfRange {
        /// The field or metric name.
        field: String,
        /// The value as given.
        value: f64,
        /// The allowed range, in words.
        range: &'static str,
    },
    /// A required text field is empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The field name.
        field: &'static str,
    },
    /// A name (metric, service, label) that breaks its pattern.
    #[error("invalid {field} {name:?}: {why}")]
    Name {
        /// What kind of name.
        field: &'static str,
        /// The name as given.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// More entries than a field allows.
    #[error("{field} has {len} entries, more than the {max} allowed")]
    TooMany {
        /// The field name.
        field: &'static str,
        /// How many were given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An encoded event over [`crate::MAX_EVENT_BYTES`].
    #[error("event is {len} bytes, more than the {max} bytes allowed")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}
