//! A tiny seeded pseudo-random source: SplitMix64.
//!
//! Hand-written so the simulator needs no dependency for it and its output can never change
//! under a crate upgrade: the same seed gives the same mesh on every machine, forever.

/// SplitMix64 (Steele, Lea and Flood), the generator Java's `SplittableRandom` uses.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// A number in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// An index in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The SplitMix64 finaliser: a good 64-bit hash of `z`.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Noise in `-1.0..1.0` that depends only on its inputs, so a sample's noise never depends on
/// how many other samples were drawn before it (a command does not shift later noise).
pub fn noise(seed: u64, parts: &[u64]) -> f64 {
    let mut h = mix(seed ^ 0x6A09_E667_F3BC_C908);
    for &p in parts {
        h = mix(h ^ p);
    }
    (h >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let mut c = SplitMix64::new(8);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..5).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn unit_and_noise_stay_in_range() {
        let mut r = SplitMix64::new(1);
        for i in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let n = noise(3, &[i, 2]);
            assert!((-1.0..1.0).contains(&n));
        }
    }
}
