//! Smart plugs in the charging shed (`[rules.smart_plug]`): what a plug measures — load,
//! current, its own temperature — judged for the charging hazards compounds cut chargers
//! off for.
//!
//! | condition | level (defaults) |
//! |---|---|
//! | current ≥ `max_current_a` (10 A: the plug's rating; a short or a failing charger) | `danger_level` (red), urgent |
//! | plug temperature ≥ `max_temp_c` (70 °C) | `danger_level`, urgent |
//! | load ≥ `max_power_w` (1000 W: not an e-bike charger) | `level` (orange) |
//! | charging and the plug's temperature rising ≥ `rise_c_per_min` over `rise_window_s` | `level` |
//! | one charging session longer than `max_charging_h` (8 h) | `level` |
//!
//! A plug that meters power but not current (Xiaomi ZNCZ02LM) has its current derived from
//! the load and its voltage (220 V mains when it does not report one). A plug is charging
//! while its load is at least `charging_min_w` and it is not switched off. Linkage `switch_off` cuts the plug; its `state: OFF` report confirms it on the alert.

use std::time::Duration;

use edge_config::{Level, SmartPlugRule};
use tokio::time::Instant;

use super::hazards::{round1, Cause, Samples, Wish};

/// What one plug message says.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlugReading {
    pub power_w: Option<f64>,
    pub current_a: Option<f64>,
    pub voltage_v: Option<f64>,
    pub temp_c: Option<f64>,
    /// `Some(false)` when the plug reports itself switched off.
    pub on: Option<bool>,
}

/// One plug's history.
#[derive(Debug, Clone, Default)]
pub struct PlugEval {
    temps: Samples,
    /// Start of the current charging session.
    charging_since: Option<Instant>,
    power_w: Option<f64>,
    current_a: Option<f64>,
    voltage_v: Option<f64>,
    temp_c: Option<f64>,
    on: Option<bool>,
}

/// Mains voltage in China, for a plug that reports power but neither current nor voltage.
const MAINS_V: f64 = 220.0;

impl PlugEval {
    /// Updates the plug's history; returns the `smart_plug` wish.
    pub fn eval(
        &mut self,
        rule: &SmartPlugRule,
        r: PlugReading,
        active: bool,
        now: Instant,
    ) -> Wish {
        self.power_w = r.power_w.or(self.power_w);
        self.current_a = r.current_a.or(self.current_a);
        self.voltage_v = r.voltage_v.filter(|v| *v > 50.0).or(self.voltage_v);
        self.on = r.on.or(self.on);
        if let Some(t) = r.temp_c {
            let window = Duration::from_secs(rule.rise_window_s.into());
            self.temps.push(now, t, window);
            self.temp_c = Some(t);
        }
        // Switched off: nothing flows, whatever the last meter reading said.
        if self.on == Some(false) {
            self.power_w = Some(0.0);
            self.current_a = Some(0.0);
        }
        let charging = self.charging(rule);
        match (charging, self.charging_since) {
            (true, None) => self.charging_since = Some(now),
            (false, Some(_)) => self.charging_since = None,
            _ => {}
        }
        self.wish(rule, active, now)
    }

    /// Re-evaluates the session length without a reading.
    pub fn tick(&self, rule: &SmartPlugRule, active: bool, now: Instant) -> Wish {
        self.wish(rule, active, now)
    }

    /// The measured current, else the load over the voltage.
    fn current(&self) -> Option<f64> {
        let derived = || {
            let amps = self.power_w? / self.voltage_v.unwrap_or(MAINS_V);
            Some(round1(amps))
        };
        self.current_a.or_else(derived)
    }

    fn charging(&self, rule: &SmartPlugRule) -> bool {
        self.on != Some(false) && self.power_w.is_some_and(|p| p >= rule.charging_min_w)
    }

    fn wish(&self, rule: &SmartPlugRule, active: bool, now: Instant) -> Wish {
        let mut w = Wish::normal();
        if let Some(a) = self.current().filter(|a| *a >= rule.max_current_a) {
            let cause = Cause::PlugOverCurrent {
                current_a: a,
                limit_a: rule.max_current_a,
            };
            w.add(rule.danger_level, cause);
        }
        let hot = rule.max_temp_c - if active { 3.0 } else { 0.0 };
        if let Some(t) = self.temp_c.filter(|t| *t >= hot) {
            let cause = Cause::PlugOverTemp {
                temp_c: t,
                threshold_c: rule.max_temp_c,
            };
            w.add(rule.danger_level, cause);
        }
        w.urgent = w.level.is_some();
        if let Some(p) = self.power_w.filter(|p| *p >= rule.max_power_w) {
            let cause = Cause::PlugOverPower {
                power_w: p,
                limit_w: rule.max_power_w,
            };
            w.add(rule.level, cause);
        }
        self.charging_hazards(rule, now, &mut w);
        w.urgent |= w.level == Some(Level::Red);
        w
    }

    fn charging_hazards(&self, rule: &SmartPlugRule, now: Instant, w: &mut Wish) {
        let Some(since) = self.charging_since else {
            return;
        };
        let window = Duration::from_secs(rule.rise_window_s.into());
        if let Some(rate) = self.temps.rate_per_min(window / 5) {
            if rate >= rule.rise_c_per_min {
                let cause = Cause::PlugTempRising {
                    c_per_min: round1(rate),
                    threshold_c_per_min: rule.rise_c_per_min,
                };
                w.add(rule.level, cause);
            }
        }
        let hours = now.duration_since(since).as_secs_f64() / 3600.0;
        if hours >= rule.max_charging_h {
            let cause = Cause::ChargingTooLong {
                hours: round1(hours),
                limit_h: rule.max_charging_h,
            };
            w.add(rule.level, cause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(power_w: f64, current_a: f64, temp_c: Option<f64>) -> PlugReading {
        PlugReading {
            power_w: Some(power_w),
            current_a: Some(current_a),
            voltage_v: Some(229.0),
            temp_c,
            on: Some(true),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_plug_metering_only_power_has_its_over_current_derived_from_the_load() {
        let rule = SmartPlugRule::default();
        let mut plug = PlugEval::default();
        let power_only = |w: f64| PlugReading {
            power_w: Some(w),
            ..PlugReading::default()
        };
        let t0 = Instant::now();
        assert_eq!(plug.eval(&rule, power_only(180.0), false, t0).level, None);
        let w = plug.eval(&rule, power_only(2900.0), false, t0);
        assert_eq!((w.level, w.urgent), (Some(Level::Red), true));
        assert!(w.causes.iter().any(|c| matches!(
            c,
            Cause::PlugOverCurrent { current_a, .. } if *current_a == 13.2
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn a_charger_drawing_its_normal_load_is_quiet_and_over_current_is_red_at_once() {
        let rule = SmartPlugRule::default();
        let mut plug = PlugEval::default();
        let t0 = Instant::now();
        let w = plug.eval(&rule, load(180.0, 0.82, Some(33.0)), false, t0);
        assert_eq!(w.level, None);
        let w = plug.eval(&rule, load(2900.0, 12.6, None), false, t0);
        assert_eq!((w.level, w.urgent), (Some(Level::Red), true));
        assert!(w
            .causes
            .iter()
            .any(|c| matches!(c, Cause::PlugOverCurrent { .. })));
        assert!(w
            .causes
            .iter()
            .any(|c| matches!(c, Cause::PlugOverPower { .. })));
        let w = plug.eval(&rule, load(0.0, 0.0, Some(31.0)), true, t0);
        assert_eq!(w.level, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plug_warming_while_charging_warns_and_an_overheating_one_is_red() {
        let rule = SmartPlugRule::default();
        let mut plug = PlugEval::default();
        let t0 = Instant::now();
        let min = |m: u64| t0 + Duration::from_secs(m * 60);
        plug.eval(&rule, load(180.0, 0.8, Some(35.0)), false, min(0));
        let w = plug.eval(&rule, load(185.0, 0.8, Some(38.0)), false, min(1));
        assert_eq!(w.level, Some(Level::Orange), "{:?}", w.causes);
        assert!(matches!(w.causes[..], [Cause::PlugTempRising { .. }]));
        let w = plug.eval(&rule, load(185.0, 0.8, Some(71.0)), true, min(2));
        assert_eq!((w.level, w.urgent), (Some(Level::Red), true));
        // The same rise on an idle plug (sun on the shed roof) is no charging hazard.
        let mut idle = PlugEval::default();
        idle.eval(&rule, load(1.0, 0.01, Some(35.0)), false, min(0));
        let w = idle.eval(&rule, load(1.0, 0.01, Some(40.0)), false, min(1));
        assert_eq!(w.level, None);
    }

    #[tokio::test(start_paused = true)]
    async fn charging_past_the_limit_warns_and_switching_off_ends_the_session() {
        let rule = SmartPlugRule::default();
        let mut plug = PlugEval::default();
        let t0 = Instant::now();
        let h = |x: u64| t0 + Duration::from_secs(x * 3600);
        plug.eval(&rule, load(150.0, 0.7, None), false, h(0));
        assert_eq!(plug.tick(&rule, false, h(7)).level, None);
        let w = plug.tick(&rule, false, h(8));
        assert_eq!(w.level, Some(Level::Orange));
        assert!(matches!(w.causes[..], [Cause::ChargingTooLong { .. }]));
        let off = PlugReading {
            on: Some(false),
            ..PlugReading::default()
        };
        assert_eq!(plug.eval(&rule, off, true, h(8)).level, None);
        assert_eq!(plug.tick(&rule, true, h(9)).level, None);
    }
}
