//! Node ids: `[A-Za-z0-9_-]{1,64}`, checked before anything reaches a subject.
//!
//! A node id becomes the last token of a subject (`mapek.monitor.<node>`), so a dot, a space
//! or a wildcard in it would publish somewhere else or match too much. It is checked once, at
//! construction, and a [`NodeId`] is valid for the rest of its life.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// The longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// The validated name of a mesh node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, Invalid> {
        let id = id.into();
        check(&id)?;
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err(Invalid::NodeId {
            id: id.to_owned(),
            why: "must be 1 to 64 characters long",
        });
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Invalid::NodeId {
            id: id.to_owned(),
            why: "may contain only letters, digits, '_' and '-'",
        });
    }
    Ok(())
}

impl TryFrom<String> for NodeId {
    type Error = Invalid;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl std::str::FromStr for NodeId {
    type Err = Invalid;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Self::new(id)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment, so ids line up in tables.
        f.pad(&self.0)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_digits_dash_and_underscore() {
        for ok in ["n17", "edge-router_3", "A", &"x".repeat(64)] {
            assert_eq!(NodeId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_what_would_escape_the_subject() {
        for bad in ["", "n.17", "n 17", "n*", "n>", "ñ", &"x".repeat(65)] {
            let err = NodeId::new(bad).unwrap_err();
            assert!(err.to_string().contains("node id"), "{err}");
        }
    }

    #[test]
    fn deserializing_checks_too() {
        let err = serde_json::from_str::<NodeId>("\"a.b\"").unwrap_err();
        assert!(err.to_string().contains("may contain only"), "{err}");
    }
}
