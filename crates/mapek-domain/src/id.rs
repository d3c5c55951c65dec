//! Deterministic event ids.
//!
//! An id is the first 128 bits of a SHA-256 over the parts that make an event what it is,
//! written as 32 hex digits. Two runs that see the same input make the same ids, so JetStream's
//! `Nats-Msg-Id` dedup drops a retried publish and a replayed decision dedups instead of
//! doubling.

use sha2::{Digest, Sha256};

/// Builds a deterministic id from parts. Each part is length-prefixed, so `("ab", "c")` and
/// `("a", "bc")` give different ids.
#[derive(Clone, Debug, Default)]
pub struct EventId {
    hasher: Sha256,
}

impl EventId {
    /// Starts an id in a namespace (`"telemetry"`, `"decision"`, …), so ids of different kinds
    /// of events never collide.
    pub fn builder(namespace: &str) -> Self {
        Self::default().part(namespace.as_bytes())
    }

    /// Adds a part.
    pub fn part(mut self, bytes: &[u8]) -> Self {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    /// Adds a text part.
    pub fn str(self, s: &str) -> Self {
        self.part(s.as_bytes())
    }

    /// Adds a number part.
    pub fn i64(self, n: i64) -> Self {
        self.part(&n.to_le_bytes())
    }

    /// Adds a float part, by its bit pattern.
    pub fn f64(self, x: f64) -> Self {
        self.part(&x.to_bits().to_le_bytes())
    }

    /// The id: 32 lowercase hex digits.
    pub fn finish(self) -> String {
        hex(&self.hasher.finalize()[..16])
    }

    /// The whole SHA-256, 64 lowercase hex digits: for hash chains, where 128 bits of an id
    /// are not the point but resistance to a forged predecessor is.
    pub fn finish_256(self) -> String {
        hex(&self.hasher.finalize())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_parts_same_id_and_parts_do_not_run_together() {
        let a = EventId::builder("t").str("ab").str("c").finish();
        let b = EventId::builder("t").str("ab").str("c").finish();
        let c = EventId::builder("t").str("a").str("bc").finish();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 32);
    }
}
