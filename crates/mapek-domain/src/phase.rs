//! The MAPE-K phases and their subjects.
//!
//! Each phase publishes on its own subject family, `mapek.<phase>.<node>`, stored in its own
//! stream. Streams re-map those subjects to `mapek.<phase>.<partition>.<node>` so that workers
//! can split the nodes between them; publishers never need to know the partition count.

use std::fmt;
use std::str::FromStr;

use crate::NodeId;

/// The server-side subject mapping that partitions telemetry before any stream takes it
/// (ADR 0012): a line of nats-server's config, for the account mapek's users are in.
/// Publishers keep publishing `mapek.monitor.<node>`; the server stores
/// `mapek.monitor.<partition>.<node>`, so the partitions can live in several streams.
pub const TELEMETRY_MAPPING: &str =
    r#"mappings = { "mapek.monitor.*": "mapek.monitor.{{partition(8,1)}}.{{wildcard(1)}}" }"#;

/// [`TELEMETRY_MAPPING`] into `partitions` partitions instead of 8: the line a server's config
/// holds for a mesh that needs more (ADR 0024).
pub fn telemetry_mapping(partitions: u32) -> String {
    TELEMETRY_MAPPING.replace("partition(8,", &format!("partition({partitions},"))
}

/// A MAPE-K phase, or one of the two families beside them: shadow decisions and dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Node telemetry.
    Monitor,
    /// Symptoms found in the telemetry.
    Analyze,
    /// Decisions taken on symptoms.
    Plan,
    /// Results of the actions taken.
    Execute,
    /// Outcomes: did the action clear the symptom?
    Knowledge,
    /// Decisions candidate policies would have taken on the live symptoms, never executed
    /// (ADR 0020).
    Shadow,
    /// Messages a consumer could not decode or validate.
    Dlq,
}

impl Phase {
    /// Every phase, in loop order, then the shadow decisions and the dead letters.
    pub const ALL: [Phase; 7] = [
        Phase::Monitor,
        Phase::Analyze,
        Phase::Plan,
        Phase::Execute,
        Phase::Knowledge,
        Phase::Shadow,
        Phase::Dlq,
    ];

    /// The subject token: `monitor`, `analyze`, …
    pub fn token(self) -> &'static str {
        match self {
            Phase::Monitor => "monitor",
            Phase::Analyze => "analyze",
            Phase::Plan => "plan",
            Phase::Execute => "execute",
            Phase::Knowledge => "knowledge",
            Phase::Shadow => "shadow",
            Phase::Dlq => "dlq",
        }
    }

    /// The JetStream stream that stores this phase.
    pub fn stream(self) -> &'static str {
        match self {
            Phase::Monitor => "MAPEK_MONITOR",
            Phase::Analyze => "MAPEK_ANALYZE",
            Phase::Plan => "MAPEK_PLAN",
            Phase::Execute => "MAPEK_EXECUTE",
            Phase::Knowledge => "MAPEK_KNOWLEDGE",
            Phase::Shadow => "MAPEK_SHADOW",
            Phase::Dlq => "MAPEK_DLQ",
        }
    }

    /// Where an event about `node` is published: `mapek.<phase>.<node>`.
    ///
    /// For [`Phase::Dlq`] the last token is the phase the rejected message came from, not a
    /// node; use [`Phase::dlq_subject`].
    pub fn subject(self, node: &NodeId) -> String {
        format!("mapek.{}.{}", self.token(), node)
    }

    /// Where a message rejected by a consumer of `from` is dead-lettered: `mapek.dlq.<from>`.
    pub fn dlq_subject(from: Phase) -> String {
        format!("mapek.dlq.{}", from.token())
    }

    /// The filter that matches the stored (partitioned) subjects of one node, or of all nodes.
    ///
    /// Stored subjects are `mapek.<phase>.<partition>.<node>`; the dead-letter stream is not
    /// partitioned and is filtered by the phase a message was rejected from.
    pub fn stored_filter(self, node: Option<&NodeId>) -> String {
        match (self, node) {
            (Phase::Dlq, _) => "mapek.dlq.>".to_owned(),
            (_, Some(node)) => format!("mapek.{}.*.{}", self.token(), node),
            (_, None) => format!("mapek.{}.>", self.token()),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.token() == s)
            .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_line_names_the_partition_count() {
        assert_eq!(telemetry_mapping(8), TELEMETRY_MAPPING);
        assert_eq!(
            telemetry_mapping(32),
            r#"mappings = { "mapek.monitor.*": "mapek.monitor.{{partition(32,1)}}.{{wildcard(1)}}" }"#
        );
    }
}
