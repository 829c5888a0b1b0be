//! The duration histogram of one series, with the explicit bucket boundaries the HTTP
//! semantic conventions recommend for `http.{server,client}.request.duration`.

/// Upper bounds in seconds, as exported.
pub const BOUNDS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The same bounds in nanoseconds: durations are compared exactly, as integers.
const BOUNDS_NS: [u64; 14] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    75_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    750_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    7_500_000_000,
    10_000_000_000,
];

/// One bucket per bound, plus the last one for everything above 10 s.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// A cumulative histogram: counts since `start_unix_ns`, never reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; bucket `i` holds `(bound[i-1], bound[i]]`.
    pub buckets: [u64; BUCKETS],
    pub count: u64,
    /// Exact, in nanoseconds; saturates after 584 years of summed request time.
    pub sum_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    /// When the series began: the start of the first request it measured.
    pub start_unix_ns: u64,
    /// The end of the latest request measured, to find idle series.
    pub last_unix_ns: u64,
}

impl Histogram {
    pub fn new(start_unix_ns: u64) -> Self {
        Self {
            buckets: [0; BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            start_unix_ns,
            last_unix_ns: start_unix_ns,
        }
    }

    pub fn observe(&mut self, duration_ns: u64, end_unix_ns: u64) {
        self.buckets[bucket_index(duration_ns)] += 1;
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(duration_ns);
        self.min_ns = self.min_ns.min(duration_ns);
        self.max_ns = self.max_ns.max(duration_ns);
        self.last_unix_ns = self.last_unix_ns.max(end_unix_ns);
    }

    /// Adds another series' counts, for outputs that merge series (Prometheus labels).
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.start_unix_ns = self.start_unix_ns.min(other.start_unix_ns);
        self.last_unix_ns = self.last_unix_ns.max(other.last_unix_ns);
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

/// The bucket of a duration: the first whose upper bound is at least the duration.
pub fn bucket_index(duration_ns: u64) -> usize {
    BOUNDS_NS.partition_point(|&bound| bound < duration_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn bounds_agree() {
        for (s, ns) in BOUNDS_SECONDS.iter().zip(BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
    }

    #[test]
    fn upper_bounds_are_inclusive() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(5 * MS), 0, "le=0.005 holds exactly 5 ms");
        assert_eq!(bucket_index(5 * MS + 1), 1);
        assert_eq!(bucket_index(10 * MS), 1);
        assert_eq!(bucket_index(99 * MS), 5);
        assert_eq!(bucket_index(100 * MS), 5);
        assert_eq!(bucket_index(1_000 * MS), 9);
        assert_eq!(bucket_index(10_000 * MS), 13);
        assert_eq!(bucket_index(10_000 * MS + 1), 14, "above 10 s: +Inf only");
        assert_eq!(bucket_index(u64::MAX), 14);
    }

    #[test]
    fn observe_counts_sums_and_bounds() {
        let mut h = Histogram::new(1_000);
        h.observe(3 * MS, 2_000);
        h.observe(30 * MS, 5_000);
        h.observe(12_000 * MS, 4_000);
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[3], 1);
        assert_eq!(h.buckets[14], 1);
        assert_eq!(h.buckets.iter().sum::<u64>(), 3);
        assert_eq!(h.sum_ns, 12_033 * MS);
        assert_eq!((h.min_ns, h.max_ns), (3 * MS, 12_000 * MS));
        assert_eq!((h.start_unix_ns, h.last_unix_ns), (1_000, 5_000));
        assert!((h.sum_seconds() - 12.033).abs() < 1e-9);
    }

    #[test]
    fn sum_saturates() {
        let mut h = Histogram::new(0);
        h.observe(u64::MAX - 1, 0);
        h.observe(u64::MAX - 1, 0);
        assert_eq!(h.sum_ns, u64::MAX);
        assert_eq!(h.count, 2);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Histogram::new(100);
        a.observe(MS, 150);
        let mut b = Histogram::new(50);
        b.observe(200 * MS, 300);
        a.merge(&b);
        assert_eq!(a.count, 2);
        assert_eq!(a.buckets[0], 1);
        assert_eq!(a.buckets[6], 1);
        assert_eq!((a.start_unix_ns, a.last_unix_ns), (50, 300));
        assert_eq!((a.min_ns, a.max_ns), (MS, 200 * MS));
    }
}
