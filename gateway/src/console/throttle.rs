//! Failed logins slow down guessing per (user name, source address), with growing delays,
//! instead of locking an account: a lock-out per user name lets anyone on the network keep
//! the duty officer out for good by failing five times every quarter hour, while a delay
//! per address throttles only the machine that is guessing. The duty officer's own machine
//! still logs in with the right password.
//!
//! After `after` failures in a row from one address for one name, that pair must wait
//! [`FIRST_DELAY`] before its next try, doubling with every further failure up to
//! [`MAX_DELAY`]; a success or [`MAX_DELAY`] without failures forgets it. The table is
//! bounded ([`CAPACITY`]): when full, pairs no longer waiting go first, then the stalest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The wait after the failure that reaches the threshold.
pub const FIRST_DELAY: Duration = Duration::from_secs(5);
/// The longest wait (and how long a pair's failures are remembered).
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Pairs remembered at most.
pub const CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Option<Instant>,
}

/// The failed-login table of one console.
#[derive(Debug)]
pub struct Throttle {
    after: u32,
    pairs: Mutex<HashMap<(String, IpAddr), Failures>>,
}

impl Throttle {
    /// Delays start after `after` failures in a row (`[console] lockout_after_failures`).
    pub fn new(after: u32) -> Throttle {
        Throttle {
            after: after.max(1),
            pairs: Mutex::new(HashMap::new()),
        }
    }

    /// How long `user` from `addr` must still wait, if at all.
    pub fn wait_left(&self, user: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        let pairs = self.pairs.lock().ok()?;
        let until = pairs.get(&(user.to_owned(), addr))?.until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; returns the wait it imposes, if any.
    pub fn fail(&self, user: &str, addr: IpAddr, now: Instant) -> Option<Duration> {
        let mut pairs = self.pairs.lock().ok()?;
        let key = (user.to_owned(), addr);
        if !pairs.contains_key(&key) && pairs.len() >= CAPACITY {
            make_room(&mut pairs, now);
        }
        let f = pairs.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            until: None,
        });
        if now.duration_since(f.last) >= MAX_DELAY {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        let over = f.count.checked_sub(self.after)?;
        let delay = FIRST_DELAY
            .checked_mul(2u32.saturating_pow(over.min(16)))
            .map_or(MAX_DELAY, |d| d.min(MAX_DELAY));
        f.until = Some(now + delay);
        Some(delay)
    }

    /// Forgets the pair's failures (a successful login).
    pub fn forget(&self, user: &str, addr: IpAddr) {
        if let Ok(mut pairs) = self.pairs.lock() {
            pairs.remove(&(user.to_owned(), addr));
        }
    }

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.pairs.lock().map_or(0, |p| p.len())
    }

    /// Whether no pair is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the pairs not waiting now; if none, the one whose last failure is oldest.
fn make_room(pairs: &mut HashMap<(String, IpAddr), Failures>, now: Instant) {
    pairs.retain(|_, f| f.until.is_some_and(|t| t > now));
    if pairs.len() >= CAPACITY {
        let stalest = pairs
            .iter()
            .min_by_key(|(_, f)| f.last)
            .map(|(k, _)| k.clone());
        if let Some(k) = stalest {
            pairs.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn delays_grow_per_user_and_address_and_spare_other_addresses() {
        let t = Throttle::new(3);
        let now = Instant::now();
        assert_eq!(t.fail("duty", A, now), None);
        assert_eq!(t.fail("duty", A, now), None);
        assert_eq!(t.fail("duty", A, now), Some(FIRST_DELAY));
        assert_eq!(t.wait_left("duty", A, now), Some(FIRST_DELAY));
        assert_eq!(t.wait_left("duty", B, now), None, "another machine");
        assert_eq!(t.wait_left("other", A, now), None, "another name");
        let later = now + FIRST_DELAY;
        assert_eq!(t.wait_left("duty", A, later), None, "a delay, not a lock");
        assert_eq!(t.fail("duty", A, later), Some(FIRST_DELAY * 2));
        let mut at = later;
        for _ in 0..20 {
            at += MAX_DELAY / 2;
            assert!(t.fail("duty", A, at).unwrap() <= MAX_DELAY);
        }
        assert_eq!(t.wait_left("duty", A, at), Some(MAX_DELAY));
        t.forget("duty", A);
        assert_eq!(t.wait_left("duty", A, at), None);
    }

    #[test]
    fn failures_are_forgotten_after_the_longest_delay() {
        let t = Throttle::new(2);
        let now = Instant::now();
        t.fail("duty", A, now);
        assert_eq!(t.fail("duty", A, now + MAX_DELAY), None, "counted afresh");
    }

    #[test]
    fn the_table_stays_bounded_under_random_names() {
        let t = Throttle::new(1);
        let now = Instant::now();
        for i in 0..CAPACITY + 50 {
            t.fail(&format!("u{i}"), A, now + Duration::from_millis(i as u64));
        }
        assert!(t.len() <= CAPACITY, "{}", t.len());
        assert!(t.wait_left("duty", A, now).is_none());
    }
}
