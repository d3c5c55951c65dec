//! Damaged copies of valid input, for the tests that hold a decoder to never panicking.
//!
//! The damage is seeded: every run makes the same cases, so a failure names its case and
//! input and can be run again. Damage is what a cut-off write, a flipped bit or a hostile
//! client makes: bits flipped, bytes set to the values that end or extend an Avro varint,
//! the input cut short, bytes inserted or repeated, a huge length written into it.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// A seeded source of damage (xorshift64).
pub struct Mutator(u64);

/// Bytes that end, extend or max out a varint, and the zigzag encoding of a huge length.
const HOSTILE: [u8; 6] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];
const HUGE_LENGTH: [u8; 10] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

impl Mutator {
    /// A mutator whose damage follows from `seed` (not 0).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A copy of `valid` with one to three kinds of damage.
    pub fn damage(&mut self, valid: &[u8]) -> Vec<u8> {
        let mut out = valid.to_vec();
        for _ in 0..=self.below(3) {
            let at = self.below(out.len() + 1);
            match self.below(7) {
                0 if at < out.len() => out[at] ^= 1 << self.below(8),
                1 if at < out.len() => out[at] = HOSTILE[self.below(HOSTILE.len())],
                2 => out.truncate(at),
                3 => {
                    let n = 1 + self.below(8);
                    let bytes: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                    out.splice(at..at, bytes);
                }
                4 => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    let chunk = out[at.min(end)..end].to_vec();
                    out.splice(at..at, chunk);
                }
                5 => {
                    let end = (at + HUGE_LENGTH.len()).min(out.len());
                    out.splice(at..end, HUGE_LENGTH);
                }
                _ => out.extend((0..1 + self.below(32)).map(|_| self.next() as u8)),
            }
        }
        out
    }
}

/// Runs `check` on `cases` damaged copies of each of `valid` (and on each as it is), and
/// panics naming the case and the input (hex) on which `check` panicked.
pub fn never_panics(valid: &[Vec<u8>], cases: usize, check: impl Fn(&[u8])) {
    let mut mutator = Mutator::new(0x6d61_7065_6b21);
    for (i, input) in valid.iter().enumerate() {
        check(input);
        for case in 0..cases {
            let damaged = mutator.damage(input);
            if catch_unwind(AssertUnwindSafe(|| check(&damaged))).is_err() {
                let hex: String = damaged.iter().map(|b| format!("{b:02x}")).collect();
                panic!("input {i}, case {case}: the check panicked on {hex}");
            }
        }
    }
}
