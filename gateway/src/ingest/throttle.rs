//! Per-device token buckets: a device that floods loses its own messages, nobody else's.

use std::time::Duration;

use tokio::time::Instant;

/// Sustained messages per second a device may send.
pub const RATE_PER_S: f64 = 20.0;
/// Burst a device may send at once.
pub const BURST: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

/// One bucket per device index.
#[derive(Debug)]
pub struct Throttle {
    buckets: Vec<Bucket>,
}

impl Throttle {
    pub fn new(devices: usize) -> Self {
        Throttle {
            buckets: vec![
                Bucket {
                    tokens: BURST,
                    last: None
                };
                devices
            ],
        }
    }

    /// Takes a token for `device`; false when its bucket is empty.
    pub fn admit(&mut self, device: usize, now: Instant) -> bool {
        let Some(b) = self.buckets.get_mut(device) else {
            return false;
        };
        let elapsed = b
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        b.tokens = (b.tokens + elapsed.as_secs_f64() * RATE_PER_S).min(BURST);
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_device_is_throttled_and_its_neighbour_is_not() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2);
        let admitted = (0..10_000).filter(|_| t.admit(0, t0)).count();
        assert_eq!(admitted, BURST as usize);
        assert!(t.admit(1, t0), "another device still passes");
        // One second later the flooder has RATE_PER_S tokens again.
        let later = t0 + Duration::from_secs(1);
        let admitted = (0..1000).filter(|_| t.admit(0, later)).count();
        assert_eq!(admitted, RATE_PER_S as usize);
    }
}
