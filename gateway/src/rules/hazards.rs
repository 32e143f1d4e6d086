//! Per-kind evaluators: a reading in, the wished level of each alert kind it informs out.
//!
//! Each evaluator applies its thresholds and hysteresis (it is told whether its condition is
//! currently active) and keeps whatever history it needs (temperature samples for rates,
//! the charging session of an e-bike battery). Debounce and clear-hold are not done here but
//! in [`super::condition`].

use std::collections::VecDeque;
use std::time::Duration;

use chrono::NaiveTime;
use edge_config::{EbikeBatteryRule, GasRule, HeatRule, Level};
use serde::Serialize;
use tokio::time::Instant;

/// Why a condition is active: recorded on the alert as evidence and used for its message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    SmokeDetected,
    TempAboveFixed {
        temp_c: f64,
        threshold_c: f64,
    },
    RateOfRise {
        c_per_min: f64,
        threshold_c_per_min: f64,
    },
    GasLowStage {
        lel_pct: f64,
        threshold_pct: f64,
    },
    GasHighStage {
        lel_pct: f64,
        threshold_pct: f64,
    },
    GasAlarmFlag,
    /// The heat detector's own alarm flag.
    HeatAlarmFlag,
    WaterLeak,
    WaterLeakRepeated {
        within_min: u32,
    },
    BatteryOverTemp {
        temp_c: f64,
        threshold_c: f64,
    },
    BatteryTempRising {
        c_per_min: f64,
        threshold_c_per_min: f64,
    },
    ThermalRunaway {
        c_per_s: f64,
    },
    VoltageCollapse {
        drop_pct: f64,
        threshold_pct: f64,
    },
    ChargingTooLong {
        hours: f64,
        limit_h: f64,
    },
    BatteryRemoved,
    /// The CO alarm's own flag.
    CoAlarmFlag,
    /// CO present, below the alarm points.
    CoWarning {
        ppm: f64,
        threshold_ppm: f64,
    },
    /// At an alarm point, not yet for its time: the alarm follows after `alarm_after_min`.
    CoAtAlarmPoint {
        ppm: f64,
        threshold_ppm: f64,
        alarm_after_min: u32,
    },
    /// At an alarm point for its time (or at the immediate one).
    CoAlarm {
        ppm: f64,
        threshold_ppm: f64,
        for_min: f64,
    },
    PlugOverCurrent {
        current_a: f64,
        limit_a: f64,
    },
    PlugOverPower {
        power_w: f64,
        limit_w: f64,
    },
    PlugOverTemp {
        temp_c: f64,
        threshold_c: f64,
    },
    PlugTempRising {
        c_per_min: f64,
        threshold_c_per_min: f64,
    },
    SosPressed,
    Offline {
        silent_s: u64,
    },
    BatteryLow {
        battery_pct: Option<f64>,
    },
    Tamper,
}

/// A wish: `Some(level)` with its causes, or normal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Wish {
    pub level: Option<Level>,
    pub causes: Vec<Cause>,
    /// Raise without debounce (alarm flags, red-level readings).
    pub urgent: bool,
}

impl Wish {
    pub fn normal() -> Self {
        Wish::default()
    }

    pub(super) fn add(&mut self, level: Level, cause: Cause) {
        self.level = Some(self.level.map_or(level, |l| l.max(level)));
        self.causes.push(cause);
    }

    /// A boolean alarm flag: urgent when set.
    pub fn flag(on: bool, level: Level, cause: Cause) -> Self {
        let mut w = Wish::normal();
        if on {
            w.add(level, cause);
            w.urgent = true;
        }
        w
    }
}

/// Time-stamped samples of one quantity within a sliding window.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    buf: VecDeque<(Instant, f64)>,
}

impl Samples {
    /// Adds a sample and forgets those older than `window`.
    pub fn push(&mut self, now: Instant, value: f64, window: Duration) {
        self.buf.push_back((now, value));
        while let Some(&(t, _)) = self.buf.front() {
            if now.duration_since(t) > window {
                self.buf.pop_front();
            } else {
                break;
            }
        }
        // Bounded even for a device that floods: keep at most 512 samples.
        while self.buf.len() > 512 {
            self.buf.pop_front();
        }
    }

    /// Rise per minute between the oldest sample in the window and the newest, once the
    /// samples span at least `min_span`.
    pub fn rate_per_min(&self, min_span: Duration) -> Option<f64> {
        let (&(t0, v0), &(t1, v1)) = (self.buf.front()?, self.buf.back()?);
        let span = t1.duration_since(t0);
        (span >= min_span && !span.is_zero()).then(|| (v1 - v0) / span.as_secs_f64() * 60.0)
    }

    /// Rise per second between the last two samples, and the time of the earlier one.
    pub fn last_step_per_s(&self) -> Option<(f64, Instant)> {
        let n = self.buf.len();
        if n < 2 {
            return None;
        }
        let (t0, v0) = self.buf[n - 2];
        let (t1, v1) = self.buf[n - 1];
        let dt = t1.duration_since(t0).as_secs_f64();
        (dt > 0.0).then(|| ((v1 - v0) / dt, t0))
    }
}

/// Heat detector: fixed temperature with hysteresis, and rate of rise.
#[derive(Debug, Clone, Default)]
pub struct HeatEval {
    samples: Samples,
}

impl HeatEval {
    /// A heat detector's reading: its temperature (fixed threshold, rate of rise) when it
    /// reports one, and its own alarm flag when it has one — the flag alone raises the alarm.
    pub fn eval_reading(
        &mut self,
        rule: &HeatRule,
        temp_c: Option<f64>,
        flag: Option<bool>,
        active: bool,
        now: Instant,
    ) -> Wish {
        let mut w = match temp_c {
            Some(t) => self.eval(rule, t, active, now),
            None => Wish::normal(),
        };
        if flag == Some(true) {
            w.add(rule.level, Cause::HeatAlarmFlag);
            w.urgent = true;
        }
        w
    }

    pub fn eval(&mut self, rule: &HeatRule, temp_c: f64, active: bool, now: Instant) -> Wish {
        let window = Duration::from_secs(rule.rate_window_s.into());
        self.samples.push(now, temp_c, window);
        let mut w = Wish::normal();
        let fixed = if active {
            rule.fixed_c - rule.hysteresis_c
        } else {
            rule.fixed_c
        };
        if temp_c >= fixed {
            w.add(
                rule.level,
                Cause::TempAboveFixed {
                    temp_c,
                    threshold_c: rule.fixed_c,
                },
            );
        }
        if let Some(rate) = self.samples.rate_per_min(window / 3) {
            if rate >= rule.rate_c_per_min {
                w.add(
                    rule.level,
                    Cause::RateOfRise {
                        c_per_min: round1(rate),
                        threshold_c_per_min: rule.rate_c_per_min,
                    },
                );
            }
        }
        w.urgent = w.level == Some(Level::Red);
        w
    }
}

/// Gas: two stages in % LEL with hysteresis; a boolean alarm counts as the high stage.
pub fn gas(rule: &GasRule, lel: Option<f64>, flag: Option<bool>, active: Option<Level>) -> Wish {
    let mut w = Wish::normal();
    if flag == Some(true) {
        w.add(rule.high_level, Cause::GasAlarmFlag);
        w.urgent = true;
    }
    if let Some(lel) = lel {
        let hyst = |stage_level: Level, threshold: f64| {
            if active.is_some_and(|a| a >= stage_level) {
                threshold - rule.hysteresis_lel_pct
            } else {
                threshold
            }
        };
        if lel >= hyst(rule.high_level, rule.high_lel_pct) {
            w.add(
                rule.high_level,
                Cause::GasHighStage {
                    lel_pct: lel,
                    threshold_pct: rule.high_lel_pct,
                },
            );
        } else if lel >= hyst(rule.low_level, rule.low_lel_pct) {
            w.add(
                rule.low_level,
                Cause::GasLowStage {
                    lel_pct: lel,
                    threshold_pct: rule.low_lel_pct,
                },
            );
        }
        w.urgent |= w.level == Some(Level::Red);
    }
    w
}

/// What an e-bike battery reading says.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatteryReading {
    pub temp_c: Option<f64>,
    pub voltage_v: Option<f64>,
    pub charging: Option<bool>,
    pub present: Option<bool>,
}

/// E-bike battery in the charging shed: over-temperature, sustained rise while charging,
/// thermal runaway, voltage collapse, over-long charging; and removal at night (theft).
#[derive(Debug, Clone, Default)]
pub struct EbikeEval {
    temps: Samples,
    charging_since: Option<Instant>,
    /// Highest voltage seen in the current charging session.
    session_max_v: Option<f64>,
    last_voltage: Option<f64>,
    last_temp: Option<f64>,
    /// Start of an uninterrupted run of fast (runaway-rate) steps.
    fast_rise_since: Option<Instant>,
    charging: bool,
}

impl EbikeEval {
    /// Updates the battery's history; returns the `ebike_battery` wish.
    pub fn eval(
        &mut self,
        rule: &EbikeBatteryRule,
        r: BatteryReading,
        active: bool,
        now: Instant,
    ) -> Wish {
        self.track_session(r, now);
        if let Some(t) = r.temp_c {
            self.track_temp(rule, t, now);
        }
        self.wish(rule, active, now)
    }

    /// Re-evaluates time-based causes (over-long charging) without a reading.
    pub fn tick(&mut self, rule: &EbikeBatteryRule, active: bool, now: Instant) -> Wish {
        self.wish(rule, active, now)
    }

    fn track_session(&mut self, r: BatteryReading, now: Instant) {
        if let Some(charging) = r.charging {
            if charging && !self.charging {
                self.charging_since = Some(now);
                self.session_max_v = None;
            }
            if !charging {
                self.charging_since = None;
            }
            self.charging = charging;
        }
        if let Some(v) = r.voltage_v {
            self.last_voltage = Some(v);
            if self.charging {
                self.session_max_v = Some(self.session_max_v.map_or(v, |m| m.max(v)));
            }
        }
    }

    fn track_temp(&mut self, rule: &EbikeBatteryRule, t: f64, now: Instant) {
        self.temps
            .push(now, t, Duration::from_secs(rule.rise_window_s.into()));
        self.last_temp = Some(t);
        match self.temps.last_step_per_s() {
            Some((rate, from)) if rate >= rule.runaway_c_per_s => {
                self.fast_rise_since.get_or_insert(from);
            }
            _ => self.fast_rise_since = None,
        }
    }

    fn voltage_drop_pct(&self) -> Option<f64> {
        let (max, v) = (self.session_max_v?, self.last_voltage?);
        (max > 0.0).then(|| (max - v) / max * 100.0)
    }

    fn wish(&self, rule: &EbikeBatteryRule, active: bool, now: Instant) -> Wish {
        let mut w = Wish::normal();
        let hot_threshold = if active {
            rule.temp_c - 2.0
        } else {
            rule.temp_c
        };
        let hot = self.last_temp.filter(|t| *t >= hot_threshold);
        if let Some(t) = hot {
            w.add(
                rule.level,
                Cause::BatteryOverTemp {
                    temp_c: t,
                    threshold_c: rule.temp_c,
                },
            );
        }
        let window = Duration::from_secs(rule.rise_window_s.into());
        if self.charging {
            if let Some(rate) = self.temps.rate_per_min(window / 5) {
                if rate >= rule.rise_c_per_min {
                    w.add(
                        rule.level,
                        Cause::BatteryTempRising {
                            c_per_min: round1(rate),
                            threshold_c_per_min: rule.rise_c_per_min,
                        },
                    );
                }
            }
        }
        let drop = self
            .voltage_drop_pct()
            .filter(|d| self.charging && *d >= rule.voltage_drop_pct);
        if let Some(d) = drop {
            w.add(
                rule.level,
                Cause::VoltageCollapse {
                    drop_pct: round1(d),
                    threshold_pct: rule.voltage_drop_pct,
                },
            );
        }
        // GB 38031: dT/dt >= 1 °C/s for more than 3 s, with a voltage drop or over-temperature.
        let sustained = self
            .fast_rise_since
            .is_some_and(|since| now.duration_since(since) > Duration::from_secs(3));
        if sustained && (drop.is_some() || hot.is_some()) {
            let rate = self.temps.last_step_per_s().map_or(0.0, |(r, _)| round1(r));
            w.add(rule.runaway_level, Cause::ThermalRunaway { c_per_s: rate });
        }
        if let Some(since) = self.charging_since {
            let hours = now.duration_since(since).as_secs_f64() / 3600.0;
            if hours >= rule.max_charging_h {
                w.add(
                    rule.level,
                    Cause::ChargingTooLong {
                        hours: round1(hours),
                        limit_h: rule.max_charging_h,
                    },
                );
            }
        }
        w.urgent = w.level == Some(Level::Red);
        w
    }

    /// The `battery_removed` wish: absent while not charging inside the theft window.
    pub fn removal(&self, rule: &EbikeBatteryRule, present: bool, local: NaiveTime) -> Wish {
        let suspicious = !present && !self.charging && rule.theft_window.contains(local);
        let mut w = Wish::flag(suspicious, rule.theft_level, Cause::BatteryRemoved);
        if present {
            w = Wish::normal();
        }
        w
    }
}

pub(super) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn gas_two_stages_with_hysteresis() {
        let rule = GasRule::default();
        assert_eq!(gas(&rule, Some(5.0), None, None).level, None);
        assert_eq!(
            gas(&rule, Some(12.5), None, None).level,
            Some(Level::Orange)
        );
        assert_eq!(gas(&rule, Some(30.0), None, None).level, Some(Level::Red));
        // Active at red: 24 %LEL is still red (hysteresis 2), 22 drops to orange.
        assert_eq!(
            gas(&rule, Some(24.0), None, Some(Level::Red)).level,
            Some(Level::Red)
        );
        assert_eq!(
            gas(&rule, Some(22.0), None, Some(Level::Red)).level,
            Some(Level::Orange)
        );
        // Active at orange: 9 %LEL stays orange, 7 is normal.
        assert_eq!(
            gas(&rule, Some(9.0), None, Some(Level::Orange)).level,
            Some(Level::Orange)
        );
        assert_eq!(gas(&rule, Some(7.0), None, Some(Level::Orange)).level, None);
    }

    #[test]
    fn a_zigbee_gas_flag_counts_as_the_high_alarm() {
        let w = gas(&GasRule::default(), None, Some(true), None);
        assert_eq!(w.level, Some(Level::Red));
        assert!(w.urgent);
    }

    #[test]
    fn a_heat_detectors_own_alarm_flag_raises_the_alarm_below_the_fixed_temperature() {
        let rule = HeatRule::default();
        let t0 = Instant::now();
        let mut eval = HeatEval::default();
        // The detector tripped by its own design at 40 °C: the gateway's 57 °C is not reached.
        let tripped = eval.eval_reading(&rule, Some(40.0), Some(true), false, t0);
        assert_eq!(tripped.level, Some(rule.level));
        assert!(tripped.urgent);
        let quiet = eval.eval_reading(&rule, Some(40.0), Some(false), true, s(t0, 10));
        assert_eq!(
            quiet.level, None,
            "the flag cleared and the temperature is normal"
        );
        let flag_only = HeatEval::default().eval_reading(&rule, None, Some(true), false, t0);
        assert_eq!(
            flag_only.level,
            Some(rule.level),
            "a flag without a temperature"
        );
        let hot = HeatEval::default().eval_reading(&rule, Some(60.0), Some(false), false, t0);
        assert_eq!(hot.level, Some(Level::Red), "the temperature still counts");
    }

    #[test]
    fn heat_alarms_on_fixed_temperature_and_on_rate_of_rise() {
        let rule = HeatRule::default();
        let t0 = Instant::now();
        let mut fixed = HeatEval::default();
        assert_eq!(fixed.eval(&rule, 58.0, false, t0).level, Some(Level::Red));

        let mut rising = HeatEval::default();
        // 25 °C rising 10 °C/min: alarm by rate long before 57 °C.
        let mut level = None;
        for i in 0..=6 {
            let w = rising.eval(&rule, 25.0 + i as f64 * 10.0 / 6.0, false, s(t0, i * 10));
            level = level.or(w.level);
        }
        assert_eq!(level, Some(Level::Red));

        let mut steady = HeatEval::default();
        for i in 0..=12 {
            assert_eq!(
                steady
                    .eval(&rule, 30.0 + (i % 2) as f64 * 0.5, false, s(t0, i * 10))
                    .level,
                None
            );
        }
    }

    #[test]
    fn ebike_battery_rising_while_charging_warns_then_runaway_is_red() {
        let rule = EbikeBatteryRule::default();
        let t0 = Instant::now();
        let mut e = EbikeEval::default();
        let read = |t: f64, v: f64| BatteryReading {
            temp_c: Some(t),
            voltage_v: Some(v),
            charging: Some(true),
            present: Some(true),
        };
        // 35 °C, rising 2 °C/min for 4 minutes: a warning, not red.
        let mut last = Wish::normal();
        for i in 0..=24 {
            last = e.eval(
                &rule,
                read(35.0 + i as f64 * 2.0 / 6.0, 54.0),
                false,
                s(t0, i * 10),
            );
        }
        assert_eq!(last.level, Some(Level::Orange));
        assert!(last
            .causes
            .iter()
            .any(|c| matches!(c, Cause::BatteryTempRising { .. })));
        // Then +1.5 °C/s for 6 s past 60 °C: thermal runaway.
        let base = s(t0, 250);
        for i in 0..=6 {
            last = e.eval(
                &rule,
                read(58.0 + i as f64 * 1.5, 54.0),
                true,
                base + Duration::from_secs(i),
            );
        }
        assert_eq!(last.level, Some(Level::Red));
        assert!(last
            .causes
            .iter()
            .any(|c| matches!(c, Cause::ThermalRunaway { .. })));
    }

    #[test]
    fn ebike_charging_longer_than_the_limit_warns() {
        let rule = EbikeBatteryRule::default();
        let t0 = Instant::now();
        let mut e = EbikeEval::default();
        let on = BatteryReading {
            charging: Some(true),
            ..Default::default()
        };
        assert_eq!(e.eval(&rule, on, false, t0).level, None);
        assert_eq!(e.tick(&rule, false, s(t0, 7 * 3600)).level, None);
        let w = e.tick(&rule, false, s(t0, 8 * 3600 + 1));
        assert_eq!(w.level, Some(Level::Orange));
    }

    #[test]
    fn voltage_collapse_while_charging_warns() {
        let rule = EbikeBatteryRule::default();
        let t0 = Instant::now();
        let mut e = EbikeEval::default();
        let at = |v: f64| BatteryReading {
            voltage_v: Some(v),
            charging: Some(true),
            ..Default::default()
        };
        e.eval(&rule, at(54.0), false, t0);
        let w = e.eval(&rule, at(38.0), false, s(t0, 5));
        assert!(w
            .causes
            .iter()
            .any(|c| matches!(c, Cause::VoltageCollapse { .. })));
    }

    #[test]
    fn a_battery_removed_at_night_while_not_charging_is_suspicious() {
        let rule = EbikeBatteryRule::default();
        let e = EbikeEval::default();
        let night = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
        let noon = NaiveTime::from_hms_opt(12, 0, 0).unwrap();
        assert_eq!(e.removal(&rule, false, night).level, Some(Level::Yellow));
        assert_eq!(e.removal(&rule, false, noon).level, None);
        assert_eq!(e.removal(&rule, true, night).level, None);
    }
}
