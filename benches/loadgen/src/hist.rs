//! Fixed-size log-linear latency histogram (nanoseconds), allocation-free on record.
//!
//! Values below 128 ns have a bucket each; above, every power of two is cut into 64
//! buckets, so a reported percentile is within ~1.6 % of the true value.

const LINEAR: usize = 128;
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = LINEAR + (64 - 7) * SUB;

pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0, sum: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR as u64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= 7
        let sub = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
        LINEAR + (e as usize - 7) * SUB + sub
    }

    /// The midpoint of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < LINEAR {
            return i as u64;
        }
        let e = (i - LINEAR) / SUB + 7;
        let sub = ((i - LINEAR) % SUB) as u64;
        let width = 1u64 << (e as u32 - SUB_BITS);
        (1u64 << e) + sub * width + width / 2
    }

    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
        self.sum += u128::from(ns);
        self.max = self.max.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), in ns.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_precise() {
        let mut last = 0;
        for v in (0..10_000_000u64).step_by(997) {
            let i = Histogram::index(v);
            assert!(i >= last);
            last = i;
            let m = Histogram::value(i);
            let err = (m as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(v < 128 && m == v || err < 0.02, "v {v} bucket value {m}");
        }
        assert!(Histogram::index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "{p99}");
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(h.count(), 1000);
    }
}
