//! Carbon monoxide: the alarm's own flag, and the concentration judged on the EN 50291-1
//! alarm points — a dose, not a threshold: 50 ppm is an alarm after an hour, 100 ppm after
//! ten minutes, 300 ppm at once (`[rules.carbon_monoxide]`).
//!
//! | reading | level (defaults) |
//! |---|---|
//! | `carbon_monoxide: true` (the alarm decided) | `level` (red), urgent |
//! | ≥ `high_ppm` (300) | `level`, urgent |
//! | ≥ `mid_ppm` (100) for `mid_after_min` (10), ≥ `low_ppm` (50) for `low_after_min` (60) | `level` |
//! | ≥ an alarm point, not yet for its time | `pre_alarm_level` (orange) |
//! | ≥ `warn_ppm` (30) | `warn_level` (yellow) |
//!
//! The time at a point is measured from the first reading at or above it, and survives dips
//! of less than `hysteresis_ppm`; the engine re-evaluates on every tick, so the alarm comes
//! on time even when the detector reports only on change.

use std::time::Duration;

use edge_config::{CarbonMonoxideRule, Level};
use tokio::time::Instant;

use super::hazards::{round1, Cause, Wish};

/// One CO alarm's history.
#[derive(Debug, Clone, Default)]
pub struct CoEval {
    /// Since when the concentration has been at or above `low_ppm` / `mid_ppm`.
    low_since: Option<Instant>,
    mid_since: Option<Instant>,
    last_ppm: Option<f64>,
    flag: Option<bool>,
}

impl CoEval {
    /// A reading: the flag and/or the concentration, whichever it carries.
    pub fn eval(
        &mut self,
        rule: &CarbonMonoxideRule,
        ppm: Option<f64>,
        flag: Option<bool>,
        active: Option<Level>,
        now: Instant,
    ) -> Wish {
        if flag.is_some() {
            self.flag = flag;
        }
        if let Some(ppm) = ppm {
            self.low_since = held(self.low_since, ppm, rule.low_ppm, rule.hysteresis_ppm, now);
            self.mid_since = held(self.mid_since, ppm, rule.mid_ppm, rule.hysteresis_ppm, now);
            self.last_ppm = Some(ppm);
        }
        self.wish(rule, active, now)
    }

    /// Re-evaluates the time at the alarm points without a reading.
    pub fn tick(&self, rule: &CarbonMonoxideRule, active: Option<Level>, now: Instant) -> Wish {
        self.wish(rule, active, now)
    }

    fn wish(&self, rule: &CarbonMonoxideRule, active: Option<Level>, now: Instant) -> Wish {
        let mut w = Wish::normal();
        if self.flag == Some(true) {
            w.add(rule.level, Cause::CoAlarmFlag);
            w.urgent = true;
        }
        let Some(ppm) = self.last_ppm else {
            return w;
        };
        if ppm >= rule.high_ppm {
            let cause = alarm(ppm, rule.high_ppm, Duration::ZERO);
            w.add(rule.level, cause);
            w.urgent = true;
        }
        let points = [
            (self.mid_since, rule.mid_ppm, rule.mid_after_min),
            (self.low_since, rule.low_ppm, rule.low_after_min),
        ];
        for (since, point, after_min) in points {
            let Some(since) = since else {
                continue;
            };
            let held = now.duration_since(since);
            if held >= Duration::from_secs(u64::from(after_min) * 60) {
                w.add(rule.level, alarm(ppm, point, held));
            } else {
                let cause = Cause::CoAtAlarmPoint {
                    ppm,
                    threshold_ppm: point,
                    alarm_after_min: after_min,
                };
                w.add(rule.pre_alarm_level, cause);
            }
        }
        let warn = match active {
            Some(_) => rule.warn_ppm - rule.hysteresis_ppm,
            None => rule.warn_ppm,
        };
        if ppm >= warn {
            let cause = Cause::CoWarning {
                ppm,
                threshold_ppm: rule.warn_ppm,
            };
            w.add(rule.warn_level, cause);
        }
        w
    }
}

fn alarm(ppm: f64, point: f64, held: Duration) -> Cause {
    Cause::CoAlarm {
        ppm,
        threshold_ppm: point,
        for_min: round1(held.as_secs_f64() / 60.0),
    }
}

/// When a concentration has been at or above `point` since, given when it was before: a
/// dip of less than `hysteresis` keeps the time running.
fn held(
    since: Option<Instant>,
    ppm: f64,
    point: f64,
    hysteresis: f64,
    now: Instant,
) -> Option<Instant> {
    match since {
        Some(t) if ppm > point - hysteresis => Some(t),
        _ if ppm >= point => Some(now),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, min: u64) -> Instant {
        t0 + Duration::from_secs(min * 60)
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_ppm_is_a_warning_then_a_pre_alarm_and_the_alarm_after_an_hour() {
        let rule = CarbonMonoxideRule::default();
        let mut co = CoEval::default();
        let t0 = Instant::now();
        assert_eq!(co.eval(&rule, Some(10.0), None, None, t0).level, None);
        assert_eq!(
            co.eval(&rule, Some(35.0), None, None, t0).level,
            Some(Level::Yellow)
        );
        let w = co.eval(&rule, Some(52.0), None, Some(Level::Yellow), at(t0, 1));
        assert_eq!(w.level, Some(Level::Orange));
        assert!(w.causes.iter().any(|c| matches!(
            c,
            Cause::CoAtAlarmPoint {
                alarm_after_min: 60,
                ..
            }
        )));
        // A dip of 2 ppm does not restart the hour.
        co.eval(&rule, Some(48.0), None, Some(Level::Orange), at(t0, 30));
        assert_eq!(
            co.tick(&rule, Some(Level::Orange), at(t0, 60)).level,
            Some(Level::Orange),
            "59 min at the point"
        );
        let w = co.tick(&rule, Some(Level::Orange), at(t0, 61));
        assert_eq!(w.level, Some(Level::Red));
        assert!(!w.urgent);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_ppm_alarms_after_ten_minutes_and_three_hundred_at_once() {
        let rule = CarbonMonoxideRule::default();
        let t0 = Instant::now();
        let mut co = CoEval::default();
        co.eval(&rule, Some(120.0), None, None, t0);
        assert_eq!(
            co.tick(&rule, Some(Level::Orange), at(t0, 9)).level,
            Some(Level::Orange)
        );
        assert_eq!(
            co.tick(&rule, Some(Level::Orange), at(t0, 10)).level,
            Some(Level::Red)
        );
        let mut co = CoEval::default();
        let w = co.eval(&rule, Some(320.0), None, None, t0);
        assert_eq!((w.level, w.urgent), (Some(Level::Red), true));
    }

    #[tokio::test(start_paused = true)]
    async fn the_detectors_own_flag_is_the_alarm_and_clean_air_clears_everything() {
        let rule = CarbonMonoxideRule::default();
        let t0 = Instant::now();
        let mut co = CoEval::default();
        let w = co.eval(&rule, Some(0.0), Some(true), None, t0);
        assert_eq!((w.level, w.urgent), (Some(Level::Red), true));
        let w = co.eval(&rule, Some(0.0), Some(false), Some(Level::Red), at(t0, 1));
        assert_eq!(w.level, None);
        // Falling under the alarm point by more than the hysteresis restarts its time.
        co.eval(&rule, Some(110.0), None, None, at(t0, 2));
        co.eval(&rule, Some(20.0), None, Some(Level::Orange), at(t0, 5));
        co.eval(&rule, Some(110.0), None, None, at(t0, 6));
        assert_eq!(
            co.tick(&rule, Some(Level::Orange), at(t0, 13)).level,
            Some(Level::Orange),
            "7 min since the return, not 11 since the first rise"
        );
    }
}
