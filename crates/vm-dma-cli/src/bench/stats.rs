// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Latency accumulation as Linux's `map_benchmark.c` does it: a count, a
//! sum and a sum of squares per operation, merged over threads at the end;
//! the mean and standard deviation come from those (`E[x²] − E[x]²`).
//!
//! Linux keeps its sums in units of 100 ns (each sample truncated), which
//! rounds every sample below 100 ns to zero; the operations measured here
//! mostly take less than that, so the sums are kept in nanoseconds (sum of
//! squares in `u128`, which cannot overflow in 300 s) and the result is
//! exact to the clock's resolution. Min and max are kept as well.

use std::time::Duration;

/// One operation's latencies over a run: count, sum, sum of squares, min,
/// max, in nanoseconds. Adding a sample allocates nothing.
///
/// ```
/// use std::time::Duration;
/// use vm_dma_cli::bench::stats::Latency;
///
/// let mut l = Latency::default();
/// l.add(Duration::from_nanos(100));
/// l.add(Duration::from_nanos(300));
/// assert_eq!(l.count(), 2);
/// assert_eq!(l.mean_ns(), 200.0);
/// assert_eq!(l.stddev_ns(), 100.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    count: u64,
    sum_ns: u128,
    sum_sq_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Latency {
    /// Records one sample. Durations beyond `u64::MAX` nanoseconds (584
    /// years) saturate.
    pub fn add(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let wide = u128::from(ns);
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.max_ns = self.max_ns.max(ns);
        self.count = self.count.saturating_add(1);
        self.sum_ns = self.sum_ns.saturating_add(wide);
        self.sum_sq_ns = self.sum_sq_ns.saturating_add(wide * wide);
    }

    /// Adds another thread's samples to these.
    pub fn merge(&mut self, other: &Latency) {
        if other.count == 0 {
            return;
        }
        self.min_ns = if self.count == 0 {
            other.min_ns
        } else {
            self.min_ns.min(other.min_ns)
        };
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count = self.count.saturating_add(other.count);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.sum_sq_ns = self.sum_sq_ns.saturating_add(other.sum_sq_ns);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean latency in nanoseconds; 0 without samples.
    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum_ns as f64 / self.count as f64
    }

    /// Population standard deviation in nanoseconds (Linux's
    /// `sqrt(E[x²] − E[x]²)`); 0 without samples. Rounding can make the
    /// variance slightly negative for constant samples: it is clamped to 0.
    pub fn stddev_ns(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let n = self.count as f64;
        let mean = self.sum_ns as f64 / n;
        let var = self.sum_sq_ns as f64 / n - mean * mean;
        var.max(0.0).sqrt()
    }

    /// Fastest sample in nanoseconds; 0 without samples.
    pub fn min_ns(&self) -> u64 {
        self.min_ns
    }

    /// Slowest sample in nanoseconds; 0 without samples.
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ns(v: u64) -> Duration {
        Duration::from_nanos(v)
    }

    #[test]
    fn empty_latency_reports_zeros() {
        let l = Latency::default();
        assert_eq!(
            (
                l.count(),
                l.mean_ns(),
                l.stddev_ns(),
                l.min_ns(),
                l.max_ns()
            ),
            (0, 0.0, 0.0, 0, 0)
        );
    }

    #[test]
    fn mean_and_stddev_match_the_population_formula() {
        let mut l = Latency::default();
        for v in [2, 4, 4, 4, 5, 5, 7, 9] {
            l.add(ns(v));
        }
        assert_eq!(l.mean_ns(), 5.0);
        assert_eq!(l.stddev_ns(), 2.0);
        assert_eq!((l.min_ns(), l.max_ns()), (2, 9));
    }

    #[test]
    fn constant_samples_have_zero_stddev() {
        let mut l = Latency::default();
        for _ in 0..1000 {
            l.add(ns(123_456_789));
        }
        assert_eq!(l.stddev_ns(), 0.0);
        assert_eq!(l.mean_ns(), 123_456_789.0);
    }

    #[test]
    fn merge_equals_adding_all_samples_to_one() {
        let (mut a, mut b, mut all) = (Latency::default(), Latency::default(), Latency::default());
        for v in [10, 30, 50] {
            a.add(ns(v));
            all.add(ns(v));
        }
        for v in [5, 100] {
            b.add(ns(v));
            all.add(ns(v));
        }
        let mut m = Latency::default();
        m.merge(&a);
        m.merge(&Latency::default());
        m.merge(&b);
        assert_eq!(m, all);
        assert_eq!((m.min_ns(), m.max_ns(), m.count()), (5, 100, 5));
    }

    #[test]
    fn huge_samples_saturate_instead_of_wrapping() {
        let mut l = Latency::default();
        l.add(Duration::MAX);
        l.add(Duration::MAX);
        assert_eq!(l.max_ns(), u64::MAX);
        assert!(l.mean_ns() > 1e19);
    }
}
