//! Capped exponential backoff with equal jitter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reconnect delays: `min(max, base · 2^attempt)`, drawn uniformly from its upper half.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    /// xorshift64 state: jitter needs no cryptographic quality, only a per-process seed so
    /// that gateways restarted together spread out.
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::with_seed(base, max, nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// A backoff with a fixed jitter seed (tests).
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Self {
        Self {
            base: base.max(Duration::from_millis(1)),
            max: max.max(base),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt; each call counts one failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .checked_mul(1_u32 << self.attempt.min(20))
            .unwrap_or(self.max)
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        let span = (exp - half).as_micros() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        };
        half + Duration::from_micros(jitter)
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Call after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_their_jitter_band_and_stop_at_the_cap() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(8);
        let mut b = Backoff::with_seed(base, max, 42);
        for attempt in 0..12_u32 {
            let nominal = (base * 2_u32.pow(attempt.min(10))).min(max);
            let d = b.next_delay();
            assert!(
                d >= nominal / 2 && d <= nominal,
                "attempt {attempt}: {d:?} vs {nominal:?}"
            );
        }
        assert_eq!(b.attempts(), 12);
    }

    #[test]
    fn jitter_spreads_gateways_that_fail_together() {
        let base = Duration::from_secs(4);
        let delays: std::collections::HashSet<_> = (0..20_u64)
            .map(|seed| Backoff::with_seed(base, base, seed * 7919 + 1).next_delay())
            .collect();
        assert!(delays.len() > 15, "only {} distinct delays", delays.len());
    }

    #[test]
    fn a_reset_starts_again_from_the_base_delay() {
        let base = Duration::from_millis(100);
        let mut b = Backoff::with_seed(base, Duration::from_secs(60), 7);
        for _ in 0..8 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= base);
    }
}
