//! Detection latency: from the instant a frame leaves the decoder (after real-time pacing,
//! for files) to the instant its detections are available (inference and NMS done), per
//! camera, in a fixed log-scale histogram: bounded memory, lock-free, readable as bucket
//! counts (so a reader can take the difference of two snapshots and get the quantiles of a
//! window) and as p50/p99 since start. Frames that motion gating sends to no detection are
//! not recorded (nothing was detected); frames dropped before the analysis are counted in
//! `dropped`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in milliseconds; the last bucket holds everything slower.
pub const BOUNDS_MS: [u64; 18] = [
    5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000,
];
/// Number of buckets: one per bound and one above the last.
pub const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// A histogram of detection latencies.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Counts per bucket; atomics because the analysis thread records while status and
    /// metrics read.
    counts: [AtomicU64; BUCKETS],
    /// Sum of all latencies recorded, in microseconds (a Prometheus histogram's `_sum`).
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let i = BOUNDS_MS
            .iter()
            .position(|&b| ms <= b as f64)
            .unwrap_or(BOUNDS_MS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Sum of all latencies recorded, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// The counts per bucket now.
    pub fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// The `q` quantile (0..=1) of bucket counts, in milliseconds, interpolated linearly inside
/// its bucket; `None` without samples. A quantile in the last (open) bucket is reported as
/// its lower bound.
pub fn quantile_ms(counts: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BOUNDS_MS[i - 1] as f64 };
            let Some(&upper) = BOUNDS_MS.get(i) else {
                return Some(lower);
            };
            let within = (rank - below as f64) / n as f64;
            return Some(lower + (upper as f64 - lower) * within);
        }
        below += n;
    }
    Some(BOUNDS_MS[BOUNDS_MS.len() - 1] as f64)
}

/// The counts of `now` minus those of `before` (a window between two snapshots).
pub fn window(now: &[u64; BUCKETS], before: &[u64; BUCKETS]) -> [u64; BUCKETS] {
    std::array::from_fn(|i| now[i].saturating_sub(before[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_log_buckets_and_quantiles_come_back_within_their_bucket() {
        let h = LatencyHistogram::default();
        for _ in 0..98 {
            h.record(Duration::from_millis(30));
        }
        h.record(Duration::from_millis(400));
        h.record(Duration::from_secs(60));
        let counts = h.counts();
        assert_eq!(counts.iter().sum::<u64>(), 100);
        let p50 = quantile_ms(&counts, 0.5).unwrap();
        assert!((20.0..=35.0).contains(&p50), "{p50}");
        let p99 = quantile_ms(&counts, 0.99).unwrap();
        assert!((300.0..=500.0).contains(&p99), "{p99}");
        assert_eq!(quantile_ms(&counts, 1.0), Some(10000.0), "open bucket");
        assert_eq!(quantile_ms(&[0; BUCKETS], 0.5), None);
        let later = {
            let mut c = counts;
            c[0] += 10;
            c
        };
        assert_eq!(window(&later, &counts)[0], 10);
    }
}
