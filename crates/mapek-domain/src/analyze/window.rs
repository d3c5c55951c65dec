//! Compact per-node windows: fixed-capacity rings of `f32`, a baseline average, link bits.
//!
//! Nothing here grows with time. A ring is allocated once, at the window's length, the first
//! time its metric is seen; a link is a few numbers and a 64-bit history of its transitions.
//! Sums are taken in `f64`, oldest sample first, so the same samples always give the same
//! statistic to the last bit.

use crate::LinkSample;

/// The latest samples of one metric, oldest overwritten first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ring {
    /// Empty until the first sample; then exactly `window` slots.
    buf: Box<[f32]>,
    /// Where the next sample goes.
    head: u8,
    /// How many slots hold samples.
    len: u8,
}

impl Ring {
    /// Adds a sample, dropping the oldest once the ring is full.
    pub(crate) fn push(&mut self, window: usize, x: f64) {
        if self.buf.is_empty() {
            self.buf = vec![0.0; window].into_boxed_slice();
        }
        self.buf[self.head as usize] = x as f32;
        self.head = ((self.head as usize + 1) % self.buf.len()) as u8;
        self.len = (self.len as usize + 1).min(self.buf.len()) as u8;
    }

    /// How many samples it holds.
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// The samples, oldest first.
    fn iter(&self) -> impl Iterator<Item = f32> + '_ {
        let cap = self.buf.len().max(1);
        let start = (self.head as usize + cap - self.len as usize) % cap;
        (0..self.len as usize).map(move |i| self.buf[(start + i) % cap])
    }

    /// The mean, or `None` when empty.
    pub(crate) fn mean(&self) -> Option<f64> {
        let n = self.len();
        (n > 0).then(|| self.iter().map(f64::from).sum::<f64>() / n as f64)
    }

    /// The `pct` percentile by nearest rank (the smallest sample with at least `pct` % of the
    /// samples at or below it), or `None` when empty. `scratch` is reused between calls to
    /// avoid allocating on every sample.
    pub(crate) fn percentile(&self, pct: f64, scratch: &mut Vec<f32>) -> Option<f64> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        scratch.clear();
        scratch.extend(self.iter());
        let rank = ((pct / 100.0) * n as f64).ceil() as usize;
        let index = rank.clamp(1, n) - 1;
        let (_, x, _) = scratch.select_nth_unstable_by(index, f32::total_cmp);
        Some(f64::from(*x))
    }

    /// Bytes held on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        std::mem::size_of_val::<[f32]>(&self.buf)
    }
}

/// A node's normal latency: a moving average of its samples that breached nothing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Baseline {
    value: f64,
    samples: u32,
}

impl Baseline {
    /// Folds in a sample that breached nothing.
    pub(crate) fn fold(&mut self, x: f64, alpha: f64) {
        self.value = if self.samples == 0 {
            x
        } else {
            self.value + alpha * (x - self.value)
        };
        self.samples = self.samples.saturating_add(1);
    }

    /// The baseline, once it has seen `min_samples`; never below `floor`.
    pub(crate) fn ready(&self, min_samples: u32, floor: f64) -> Option<f64> {
        (self.samples >= min_samples.max(1)).then(|| self.value.max(floor))
    }
}

/// The newest report had the link up.
const UP: u8 = 1;
/// The averages hold a sample (the first report while up seeds them).
const SEEDED: u8 = 2;
/// The link has been reported before, so the next report can be a transition.
const REPORTED: u8 = 4;

/// A node's view of one link, kept as averages and a bit history rather than a window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    /// The peer, as an index into the analyzer's names.
    pub(crate) peer: u32,
    /// The node's sample count when this link was last reported, to drop links that vanish.
    pub(crate) seen: u32,
    /// One bit per report, newest lowest: set when the link's state differed from the report
    /// before.
    flips: u64,
    /// Moving average of latency while up, in ms.
    latency: f32,
    /// Moving average of loss while up.
    loss: f32,
    /// [`UP`], [`SEEDED`] and [`REPORTED`].
    flags: u8,
}

impl Link {
    /// A link first reported in the node's sample number `seen`.
    pub(crate) fn new(peer: u32, seen: u32) -> Self {
        Self {
            peer,
            seen,
            flips: 0,
            latency: 0.0,
            loss: 0.0,
            flags: 0,
        }
    }

    /// Folds in one report of the link.
    pub(crate) fn observe(&mut self, s: &LinkSample, alpha: f64, seen: u32) {
        let flipped = self.flags & REPORTED != 0 && self.up() != s.up;
        self.flips = (self.flips << 1) | u64::from(flipped);
        self.flags |= REPORTED;
        self.flags = if s.up {
            self.flags | UP
        } else {
            self.flags & !UP
        };
        self.seen = seen;
        // A down link's latency and loss say nothing about the link when it carries traffic.
        if s.up && s.latency_ms.is_finite() && s.loss.is_finite() {
            if self.flags & SEEDED == 0 {
                self.latency = s.latency_ms as f32;
                self.loss = s.loss as f32;
                self.flags |= SEEDED;
            } else {
                self.latency = ewma(self.latency, s.latency_ms, alpha);
                self.loss = ewma(self.loss, s.loss, alpha);
            }
        }
    }

    /// Up/down transitions among the last `window` reports.
    pub(crate) fn transitions(&self, window: usize) -> u32 {
        let pairs = window.saturating_sub(1).min(63);
        (self.flips & ((1u64 << pairs) - 1)).count_ones()
    }

    /// Whether the newest report had the link up.
    pub(crate) fn up(&self) -> bool {
        self.flags & UP != 0
    }

    /// The averaged latency in ms, once the link has been up.
    pub(crate) fn latency(&self) -> Option<f64> {
        (self.flags & SEEDED != 0).then_some(f64::from(self.latency))
    }

    /// The averaged loss, once the link has been up.
    pub(crate) fn loss(&self) -> Option<f64> {
        (self.flags & SEEDED != 0).then_some(f64::from(self.loss))
    }
}

fn ewma(old: f32, x: f64, alpha: f64) -> f32 {
    let old = f64::from(old);
    (old + alpha * (x - old)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    #[test]
    fn a_ring_keeps_the_last_window_samples_in_order() {
        let mut r = Ring::default();
        for x in 1..=7 {
            r.push(5, x as f64);
        }
        assert_eq!(r.iter().collect::<Vec<_>>(), [3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(r.mean(), Some(5.0));
        assert_eq!(r.heap_bytes(), 20);
    }

    #[test]
    fn nearest_rank_p95_of_twenty_ignores_one_outlier_but_not_two() {
        let mut scratch = Vec::new();
        let mut r = Ring::default();
        for _ in 0..19 {
            r.push(20, 10.0);
        }
        r.push(20, 500.0);
        assert_eq!(r.percentile(95.0, &mut scratch), Some(10.0));
        r.push(20, 500.0);
        assert_eq!(r.percentile(95.0, &mut scratch), Some(500.0));
        assert_eq!(Ring::default().percentile(95.0, &mut scratch), None);
    }

    #[test]
    fn a_link_counts_transitions_inside_the_window_only() {
        let peer = NodeId::new("p").unwrap();
        let sample = |up| LinkSample {
            peer: peer.clone(),
            up,
            latency_ms: 5.0,
            loss: 0.0,
        };
        let mut l = Link::new(0, 0);
        for (seen, up) in [true, false, true, false, true].into_iter().enumerate() {
            l.observe(&sample(up), 0.2, seen as u32);
        }
        assert_eq!(l.transitions(5), 4);
        assert_eq!(l.transitions(3), 2);
        for seen in 5..10 {
            l.observe(&sample(true), 0.2, seen);
        }
        assert_eq!(l.transitions(5), 0);
        assert_eq!(l.transitions(10), 4);
    }
}
