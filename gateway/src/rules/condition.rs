//! One alert condition's debounce / hysteresis / clear-hold state machine.
//!
//! Evaluators say, at each reading, what level the condition *wants* (`Some(level)`) or that
//! it is normal (`None`), already applying hysteresis to their thresholds. This machine turns
//! that level-triggered wish into edge-triggered [`Change`]s:
//!
//! ```text
//!   Idle ──want──▶ Pending ──held debounce──▶ Active ──normal──▶ Clearing ──held clear_hold──▶ Idle
//!    ▲   (flags skip Pending)   │ normal            ▲  level change = Update   │ want again
//!    └──────────────────────────┘                   └──────────────────────────┘
//! ```
//!
//! A value hovering at a threshold therefore raises one alert, not fifty: it must stay over
//! for `debounce`, and once active it must stay normal for `clear_hold` before it resolves.

use std::time::Duration;

use edge_config::Level;
use tokio::time::Instant;

/// An edge produced by the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The condition became active: raise an alert at this level.
    Raise(Level),
    /// Still active, at a different level.
    Update(Level),
    /// Back to normal for long enough: resolve.
    Clear,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Idle,
    Pending { since: Instant, level: Level },
    Active { level: Level },
    Clearing { since: Instant, level: Level },
}

/// Timing of one condition.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a wish must hold before raising (zero = immediate, as for alarm flags).
    pub debounce: Duration,
    /// How long normal must hold before clearing.
    pub clear_hold: Duration,
}

/// The state of one (device, alert kind) condition.
#[derive(Debug, Clone)]
pub struct Condition {
    state: State,
    timing: Timing,
}

impl Condition {
    pub fn new(timing: Timing) -> Self {
        Condition {
            state: State::Idle,
            timing,
        }
    }

    /// Whether the condition is raised (active or clearing).
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active { .. } | State::Clearing { .. })
    }

    /// The active level, if raised.
    pub fn level(&self) -> Option<Level> {
        match self.state {
            State::Active { level } | State::Clearing { level, .. } => Some(level),
            _ => None,
        }
    }

    /// Whether the sensor's latest reading shows the hazard (raised, or waiting out the
    /// debounce); `false` while clearing.
    pub fn reports(&self) -> bool {
        matches!(self.state, State::Active { .. } | State::Pending { .. })
    }

    /// Its alert was resolved by hand (see [`super::reset`]). Returns a `Raise` for a new
    /// alert when the sensor still reports the hazard, or when `still_reported` says residents
    /// were not told all-clear: that alert keeps the condition's state, so the sensor goes on
    /// updating and clearing it. Otherwise the condition is forgotten, so the next hazard
    /// reading raises a new alert. `level` is the resolved alert's.
    pub fn reset(&mut self, still_reported: bool, level: Level, now: Instant) -> Option<Change> {
        match self.state {
            State::Active { level } => Some(Change::Raise(level)),
            State::Clearing { level, .. } if still_reported => Some(Change::Raise(level)),
            State::Idle | State::Pending { .. } if still_reported => {
                // The sensor cleared between the resolve and this reset: the new alert ends
                // after the clear-hold, by the sensor, like any other.
                self.state = State::Clearing { since: now, level };
                Some(Change::Raise(level))
            }
            // A new wish, not yet held for the debounce: it raises in its own time.
            State::Pending { .. } => None,
            State::Idle | State::Clearing { .. } => {
                self.state = State::Idle;
                None
            }
        }
    }

    /// Marks the condition raised without an edge (used when reloading active alerts after a
    /// restart, so a still-present hazard updates the existing alert instead of raising anew).
    pub fn restore_active(&mut self, level: Level) {
        self.state = State::Active { level };
    }

    /// Feeds the evaluator's wish at `now`. An `urgent` wish (an alarm flag, a red-level
    /// reading) skips the debounce: a fire alarm is never delayed.
    pub fn observe(&mut self, want: Option<Level>, urgent: bool, now: Instant) -> Option<Change> {
        let immediate = urgent || self.timing.debounce.is_zero();
        let (next, change) = match (self.state, want) {
            (State::Idle, None) => (State::Idle, None),
            (State::Idle | State::Pending { .. }, Some(level)) if immediate => {
                (State::Active { level }, Some(Change::Raise(level)))
            }
            (State::Idle, Some(level)) => (State::Pending { since: now, level }, None),
            (State::Pending { .. }, None) => (State::Idle, None),
            (State::Pending { since, .. }, Some(level)) => {
                if now.duration_since(since) >= self.timing.debounce {
                    (State::Active { level }, Some(Change::Raise(level)))
                } else {
                    (State::Pending { since, level }, None)
                }
            }
            (State::Active { level } | State::Clearing { level, .. }, Some(new)) => {
                let change = (new != level).then_some(Change::Update(new));
                (State::Active { level: new }, change)
            }
            (State::Active { level }, None) => self.clearing(now, level, now),
            (State::Clearing { since, level }, None) => self.clearing(since, level, now),
        };
        self.state = next;
        change
    }

    /// Advances timers without a new reading (called periodically).
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        let (next, change) = match self.state {
            State::Pending { since, level }
                if now.duration_since(since) >= self.timing.debounce =>
            {
                (State::Active { level }, Some(Change::Raise(level)))
            }
            State::Clearing { since, level } => self.clearing(since, level, now),
            other => (other, None),
        };
        self.state = next;
        change
    }

    fn clearing(&self, since: Instant, level: Level, now: Instant) -> (State, Option<Change>) {
        if now.duration_since(since) >= self.timing.clear_hold {
            (State::Idle, Some(Change::Clear))
        } else {
            (State::Clearing { since, level }, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        debounce: Duration::from_secs(2),
        clear_hold: Duration::from_secs(30),
    };

    fn at(base: Instant, s: u64) -> Instant {
        base + Duration::from_secs(s)
    }

    #[test]
    fn a_value_hovering_at_the_threshold_raises_once_and_clears_once() {
        let t0 = Instant::now();
        let mut c = Condition::new(T);
        let mut changes = Vec::new();
        // Over for 10 s, then over/under every second for nearly two minutes.
        for s in 0..120 {
            let want = (s < 10 || s % 2 == 0).then_some(Level::Orange);
            changes.extend(c.observe(want, false, at(t0, s)));
            changes.extend(c.tick(at(t0, s)));
        }
        // Normal for a minute.
        for s in 120..180 {
            changes.extend(c.observe(None, false, at(t0, s)));
        }
        assert_eq!(changes.first(), Some(&Change::Raise(Level::Orange)));
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, Change::Raise(_)))
                .count(),
            1
        );
        assert_eq!(changes.last(), Some(&Change::Clear));
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn a_value_flickering_faster_than_the_debounce_never_raises() {
        let t0 = Instant::now();
        let mut c = Condition::new(T);
        for s in 0..120 {
            let want = (s % 2 == 0).then_some(Level::Orange);
            assert_eq!(c.observe(want, false, at(t0, s)), None);
            assert_eq!(c.tick(at(t0, s)), None);
        }
    }

    #[test]
    fn a_blip_shorter_than_the_debounce_raises_nothing() {
        let t0 = Instant::now();
        let mut c = Condition::new(T);
        assert_eq!(c.observe(Some(Level::Orange), false, at(t0, 0)), None);
        assert_eq!(c.observe(None, false, at(t0, 1)), None);
        assert_eq!(c.tick(at(t0, 5)), None);
        assert!(!c.is_active());
    }

    #[test]
    fn a_held_wish_raises_on_the_tick_after_the_debounce() {
        let t0 = Instant::now();
        let mut c = Condition::new(T);
        c.observe(Some(Level::Orange), false, at(t0, 0));
        assert_eq!(c.tick(at(t0, 1)), None);
        assert_eq!(c.tick(at(t0, 2)), Some(Change::Raise(Level::Orange)));
    }

    #[test]
    fn flags_with_zero_debounce_raise_immediately_and_level_changes_update() {
        let t0 = Instant::now();
        let mut c = Condition::new(Timing {
            debounce: Duration::ZERO,
            ..T
        });
        assert_eq!(
            c.observe(Some(Level::Orange), false, t0),
            Some(Change::Raise(Level::Orange))
        );
        assert_eq!(c.observe(Some(Level::Orange), false, t0), None);
        assert_eq!(
            c.observe(Some(Level::Red), false, t0),
            Some(Change::Update(Level::Red))
        );
        assert_eq!(c.level(), Some(Level::Red));
    }

    #[test]
    fn a_reset_while_the_hazard_is_reported_raises_anew_and_the_sensor_still_ends_it() {
        let t0 = Instant::now();
        let mut c = Condition::new(T);
        c.observe(Some(Level::Red), true, t0);
        assert!(c.reports());
        assert_eq!(
            c.reset(true, Level::Red, at(t0, 5)),
            Some(Change::Raise(Level::Red))
        );
        assert_eq!(c.observe(Some(Level::Red), true, at(t0, 6)), None);
        assert_eq!(c.observe(None, false, at(t0, 7)), None);
        assert!(!c.reports(), "clearing: the sensor reads normal");
        assert_eq!(c.tick(at(t0, 37)), Some(Change::Clear));
    }

    #[test]
    fn a_reset_while_clearing_forgets_the_condition_so_the_next_hazard_raises() {
        let t0 = Instant::now();
        let mut c = Condition::new(T);
        c.observe(Some(Level::Red), true, t0);
        c.observe(None, false, at(t0, 1));
        assert_eq!(c.reset(false, Level::Red, at(t0, 2)), None);
        assert!(!c.is_active());
        assert_eq!(c.tick(at(t0, 60)), None, "no clear for the resolved alert");
        assert_eq!(
            c.observe(Some(Level::Red), true, at(t0, 61)),
            Some(Change::Raise(Level::Red)),
            "the same level again is a new alert"
        );
    }

    #[test]
    fn a_reset_that_promised_a_new_alert_keeps_it_even_if_the_sensor_cleared_meanwhile() {
        let t0 = Instant::now();
        let mut c = Condition::new(Timing {
            debounce: Duration::ZERO,
            clear_hold: Duration::ZERO,
        });
        c.observe(Some(Level::Orange), false, t0);
        assert_eq!(c.observe(None, false, at(t0, 1)), Some(Change::Clear));
        assert_eq!(
            c.reset(true, Level::Orange, at(t0, 1)),
            Some(Change::Raise(Level::Orange))
        );
        assert_eq!(c.tick(at(t0, 1)), Some(Change::Clear), "the sensor ends it");
    }

    #[test]
    fn an_urgent_wish_skips_the_debounce_and_zero_hold_clears_at_once() {
        let t0 = Instant::now();
        let mut c = Condition::new(Timing {
            debounce: Duration::from_secs(2),
            clear_hold: Duration::ZERO,
        });
        assert_eq!(
            c.observe(Some(Level::Red), true, t0),
            Some(Change::Raise(Level::Red))
        );
        assert_eq!(c.observe(None, false, t0), Some(Change::Clear));
    }
}
