//! Checking decisions one by one: signature, then link.
//!
//! One chain per plan partition (each partition's planner chains its own decisions; a plan
//! stream without the partition transform is one chain, numbered 0). The
//! first decision seen of a partition starts its chain whatever its `prev_hash` (the stream
//! may have aged out what came before); from then on each decision's `prev_hash` must be the
//! chain hash of the one before it. A decision identical to the last one (a redelivery)
//! neither breaks nor extends the chain.

use std::collections::BTreeMap;
use std::fmt;

use mapek_domain::Decision;

use crate::VerifyingKey;

/// Why a decision fails the audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broken {
    /// It carries no signature.
    Unsigned,
    /// Its signature is not the decision key's signature of it: it was altered after it was
    /// signed, or signed by another key.
    BadSignature,
    /// Its `prev_hash` is not the chain hash of the decision before it in its partition: a
    /// decision was removed, inserted or reordered.
    Link {
        /// The chain hash of the decision before it.
        expected: String,
        /// What it says.
        found: String,
    },
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Unsigned => f.write_str("it is not signed"),
            Broken::BadSignature => {
                f.write_str("its signature does not verify with the decision key")
            }
            Broken::Link { expected, found } => write!(
                f,
                "its prev_hash {} is not the hash of the decision before it, {}",
                short(found),
                short(expected)
            ),
        }
    }
}

fn short(hash: &str) -> &str {
    if hash.is_empty() {
        "(empty)"
    } else {
        &hash[..hash.len().min(16)]
    }
}

/// The state of an audit: the last chain hash of each partition.
pub struct Chain {
    key: Option<VerifyingKey>,
    heads: BTreeMap<u32, String>,
}

impl Chain {
    /// Checks links, and signatures with `key` when there is one.
    pub fn new(key: Option<VerifyingKey>) -> Self {
        Self {
            key,
            heads: BTreeMap::new(),
        }
    }

    /// Checks `decision`, the next of `partition`, and makes it the head of that chain when it
    /// passes. A decision that fails does not move the head, so the next good one still
    /// links.
    pub fn check(&mut self, partition: u32, decision: &Decision) -> Result<(), Broken> {
        if let Some(key) = &self.key {
            if decision.signature.is_empty() {
                return Err(Broken::Unsigned);
            }
            if !key.verifies(decision) {
                return Err(Broken::BadSignature);
            }
        }
        let hash = decision.chain_hash();
        match self.heads.get(&partition) {
            Some(head) if *head == hash => Ok(()),
            Some(head) if *head != decision.prev_hash => Err(Broken::Link {
                expected: head.clone(),
                found: decision.prev_hash.clone(),
            }),
            _ => {
                self.heads.insert(partition, hash);
                Ok(())
            }
        }
    }

    /// How many partitions' chains it has seen.
    pub fn partitions(&self) -> usize {
        self.heads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SigningKey, keys};

    fn chain_of(n: usize) -> Vec<Decision> {
        let mut out: Vec<Decision> = Vec::new();
        for i in 0..n {
            let mut d = mapek_testkit::samples::decision();
            d.decision_id = format!("d-{i}");
            d.prev_hash = out.last().map(Decision::chain_hash).unwrap_or_default();
            out.push(d);
        }
        out
    }

    #[test]
    fn a_removed_or_reordered_decision_breaks_the_link() {
        let ds = chain_of(4);
        let mut chain = Chain::new(None);
        assert_eq!(chain.check(0, &ds[0]), Ok(()));
        assert_eq!(
            chain.check(0, &ds[0]),
            Ok(()),
            "a redelivery is not a break"
        );
        assert_eq!(chain.check(0, &ds[1]), Ok(()));
        let Err(Broken::Link { expected, .. }) = chain.check(0, &ds[3]) else {
            panic!("a gap must break the chain");
        };
        assert_eq!(expected, ds[1].chain_hash());
        assert_eq!(chain.check(0, &ds[2]), Ok(()), "the head did not move");
        assert_eq!(chain.check(0, &ds[3]), Ok(()));
        // Another partition has its own chain, starting anywhere.
        assert_eq!(chain.check(5, &ds[2]), Ok(()));
        assert_eq!(chain.partitions(), 2);
    }

    #[test]
    fn with_a_key_unsigned_and_forged_decisions_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keys::generate(dir.path()).unwrap();
        let signer = SigningKey::load(&secret).unwrap();
        let mut ds = chain_of(2);
        let mut chain = Chain::new(Some(VerifyingKey::load(&public).unwrap()));
        assert_eq!(chain.check(0, &ds[0]), Err(Broken::Unsigned));
        for d in &mut ds {
            signer.sign(d).unwrap();
        }
        assert_eq!(chain.check(0, &ds[0]), Ok(()));
        let mut forged = ds[1].clone();
        forged.action.params.insert("rate_pps".into(), "1".into());
        assert_eq!(chain.check(0, &forged), Err(Broken::BadSignature));
        assert_eq!(chain.check(0, &ds[1]), Ok(()));
    }
}
