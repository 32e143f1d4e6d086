//! `[rules]` and the per-device `thresholds` overrides.

use super::Problems;
use crate::hints::{did_you_mean, list};
use crate::model::{
    CarbonMonoxideRule, Config, Device, DeviceKind, EbikeBatteryRule, GasRule, HeatRule, Level,
    Linkage, LinkageAction, Rules, SmartPlugRule, Thresholds, WaterLeakRule,
};
use crate::path::KeyPath;

/// Where each key of a (possibly merged) rule comes from: the device's
/// `thresholds` when it overrides the key, else `[rules.<kind>]`.
struct Origin<'a> {
    base: KeyPath,
    device: Option<(KeyPath, &'a Thresholds)>,
}

impl Origin<'_> {
    fn overrides(&self, key: &str) -> bool {
        self.device
            .as_ref()
            .is_some_and(|(_, t)| t.keys_set().contains(&key))
    }

    fn at(&self, key: &str) -> KeyPath {
        match &self.device {
            Some((path, _)) if self.overrides(key) => path.key(key),
            _ => self.base.key(key),
        }
    }

    /// The key to blame when `first` and `second` conflict: an overridden
    /// one if any, preferring `second`.
    fn blame(&self, first: &str, second: &str) -> KeyPath {
        if !self.overrides(second) && self.overrides(first) {
            self.at(first)
        } else {
            self.at(second)
        }
    }
}

pub(super) fn check_rules(config: &Config, p: &mut Problems) {
    let rules = &config.rules;
    let base = |k: &str| Origin {
        base: KeyPath::of("rules").key(k),
        device: None,
    };
    check_gas(&rules.gas, &base("gas"), p);
    check_heat(&rules.heat, &base("heat"), p);
    check_ebike(&rules.ebike_battery, &base("ebike_battery"), p);
    check_water(&rules.water_leak, &base("water_leak"), p);
    check_co(&rules.carbon_monoxide, &base("carbon_monoxide"), p);
    check_plug(&rules.smart_plug, &base("smart_plug"), p);
    check_timing_and_health(rules, p);
    for (i, d) in config.devices.iter().enumerate() {
        if let Some(t) = &d.thresholds {
            check_overrides(
                rules,
                d,
                t,
                KeyPath::of("devices").index(i).key("thresholds"),
                p,
            );
        }
    }
    for (i, l) in rules.linkage.iter().enumerate() {
        check_linkage(config, l, KeyPath::of("rules.linkage").index(i), p);
    }
}

fn check_levels(low: (&str, Level), high: (&str, Level), o: &Origin<'_>, p: &mut Problems) {
    if high.1 < low.1 {
        p.push(
            o.blame(low.0, high.0),
            format!(
                "{} ({}) is less severe than {} ({}); the more dangerous stage needs the same or a higher level",
                high.0, high.1, low.0, low.1
            ),
        );
    }
}

fn check_gas(g: &GasRule, o: &Origin<'_>, p: &mut Problems) {
    p.positive(o.at("low_lel_pct"), g.low_lel_pct, 100.0);
    p.positive(o.at("high_lel_pct"), g.high_lel_pct, 100.0);
    if g.low_lel_pct >= g.high_lel_pct {
        p.push(
            o.blame("low_lel_pct", "high_lel_pct"),
            format!(
                "high_lel_pct ({}) must be greater than low_lel_pct ({}); e.g. low_lel_pct = 10.0, high_lel_pct = 25.0",
                g.high_lel_pct, g.low_lel_pct
            ),
        );
    }
    if !(g.hysteresis_lel_pct >= 0.0 && g.hysteresis_lel_pct < g.low_lel_pct) {
        p.push(
            o.at("hysteresis_lel_pct"),
            format!(
                "hysteresis_lel_pct ({}) must be at least 0 and below low_lel_pct ({})",
                g.hysteresis_lel_pct, g.low_lel_pct
            ),
        );
    }
    check_levels(
        ("low_level", g.low_level),
        ("high_level", g.high_level),
        o,
        p,
    );
}

fn check_heat(h: &HeatRule, o: &Origin<'_>, p: &mut Problems) {
    p.range(o.at("fixed_c"), h.fixed_c, 30.0, 120.0);
    p.positive(o.at("rate_c_per_min"), h.rate_c_per_min, 60.0);
    p.range(o.at("rate_window_s"), h.rate_window_s, 10, 3600);
    p.below(o.at("hysteresis_c"), h.hysteresis_c, 0.0, 20.0);
}

fn check_ebike(e: &EbikeBatteryRule, o: &Origin<'_>, p: &mut Problems) {
    p.range(o.at("temp_c"), e.temp_c, 30.0, 120.0);
    p.positive(o.at("rise_c_per_min"), e.rise_c_per_min, 60.0);
    p.range(o.at("rise_window_s"), e.rise_window_s, 10, 3600);
    p.positive(o.at("runaway_c_per_s"), e.runaway_c_per_s, 100.0);
    if !(e.voltage_drop_pct > 0.0 && e.voltage_drop_pct < 100.0) {
        p.push(
            o.at("voltage_drop_pct"),
            format!(
                "{} is out of range: use a percentage above 0 and below 100",
                e.voltage_drop_pct
            ),
        );
    }
    p.positive(o.at("max_charging_h"), e.max_charging_h, 48.0);
    check_levels(("level", e.level), ("runaway_level", e.runaway_level), o, p);
}

fn check_water(w: &WaterLeakRule, o: &Origin<'_>, p: &mut Problems) {
    p.range(o.at("escalate_within_min"), w.escalate_within_min, 1, 1440);
    check_levels(
        ("level", w.level),
        ("escalate_level", w.escalate_level),
        o,
        p,
    );
}

/// `a` < `b`, blaming the overridden one.
fn check_order(a: (&str, f64), b: (&str, f64), o: &Origin<'_>, p: &mut Problems) {
    if a.1 >= b.1 {
        p.push(
            o.blame(a.0, b.0),
            format!("{} ({}) must be greater than {} ({})", b.0, b.1, a.0, a.1),
        );
    }
}

fn check_co(c: &CarbonMonoxideRule, o: &Origin<'_>, p: &mut Problems) {
    p.positive(o.at("warn_ppm"), c.warn_ppm, 10_000.0);
    p.positive(o.at("low_ppm"), c.low_ppm, 10_000.0);
    p.positive(o.at("mid_ppm"), c.mid_ppm, 10_000.0);
    p.positive(o.at("high_ppm"), c.high_ppm, 10_000.0);
    check_order(("warn_ppm", c.warn_ppm), ("low_ppm", c.low_ppm), o, p);
    check_order(("low_ppm", c.low_ppm), ("mid_ppm", c.mid_ppm), o, p);
    check_order(("mid_ppm", c.mid_ppm), ("high_ppm", c.high_ppm), o, p);
    p.range(o.at("low_after_min"), c.low_after_min, 1, 240);
    p.range(o.at("mid_after_min"), c.mid_after_min, 1, 240);
    p.below(o.at("hysteresis_ppm"), c.hysteresis_ppm, 0.0, c.warn_ppm);
    check_levels(
        ("warn_level", c.warn_level),
        ("pre_alarm_level", c.pre_alarm_level),
        o,
        p,
    );
    check_levels(
        ("pre_alarm_level", c.pre_alarm_level),
        ("level", c.level),
        o,
        p,
    );
}

fn check_plug(s: &SmartPlugRule, o: &Origin<'_>, p: &mut Problems) {
    p.positive(o.at("charging_min_w"), s.charging_min_w, 20_000.0);
    p.positive(o.at("max_current_a"), s.max_current_a, 63.0);
    p.positive(o.at("max_power_w"), s.max_power_w, 20_000.0);
    check_order(
        ("charging_min_w", s.charging_min_w),
        ("max_power_w", s.max_power_w),
        o,
        p,
    );
    p.range(o.at("max_temp_c"), s.max_temp_c, 30.0, 120.0);
    p.positive(o.at("rise_c_per_min"), s.rise_c_per_min, 60.0);
    p.range(o.at("rise_window_s"), s.rise_window_s, 10, 3600);
    p.positive(o.at("max_charging_h"), s.max_charging_h, 48.0);
    check_levels(("level", s.level), ("danger_level", s.danger_level), o, p);
}

fn check_timing_and_health(rules: &Rules, p: &mut Problems) {
    let t = &rules.timing;
    let at = KeyPath::of("rules.timing");
    p.range(at.key("debounce_s"), t.debounce_s, 0, 60);
    p.range(at.key("clear_hold_s"), t.clear_hold_s, 0, 3600);
    p.range(at.key("escalate_after_s"), t.escalate_after_s, 10, 86_400);
    p.range(at.key("actuator_confirm_s"), t.actuator_confirm_s, 1, 300);
    let d = &rules.device;
    let at = KeyPath::of("rules.device");
    p.range(
        at.key("offline_after_heartbeats"),
        d.offline_after_heartbeats,
        1,
        100,
    );
    p.range(at.key("battery_low_pct"), d.battery_low_pct, 1, 99);
}

fn rule_table(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Smoke => "smoke",
        DeviceKind::Heat => "heat",
        DeviceKind::Gas => "gas",
        DeviceKind::WaterLeak => "water_leak",
        DeviceKind::EbikeBattery => "ebike_battery",
        DeviceKind::Sos => "sos",
        DeviceKind::CarbonMonoxide => "carbon_monoxide",
        DeviceKind::SmartPlug => "smart_plug",
        DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker => "",
    }
}

fn check_overrides(rules: &Rules, d: &Device, t: &Thresholds, at: KeyPath, p: &mut Problems) {
    let accepted = Thresholds::keys_for(d.kind);
    for key in t.keys_set() {
        if !accepted.contains(&key) {
            let fix = if accepted.is_empty() {
                format!("a {} has no thresholds; remove this key", d.kind)
            } else {
                format!("a {} device accepts: {}", d.kind, accepted.join(", "))
            };
            p.push(
                at.key(key),
                format!("`{key}` does not apply to a {} device; {fix}", d.kind),
            );
        }
    }
    let o = Origin {
        base: KeyPath::of("rules").key(rule_table(d.kind)),
        device: Some((at, t)),
    };
    match d.kind {
        DeviceKind::Gas => check_gas(&rules.gas_for(d), &o, p),
        DeviceKind::Heat => check_heat(&rules.heat_for(d), &o, p),
        DeviceKind::EbikeBattery => check_ebike(&rules.ebike_battery_for(d), &o, p),
        DeviceKind::WaterLeak => check_water(&rules.water_leak_for(d), &o, p),
        DeviceKind::CarbonMonoxide => check_co(&rules.carbon_monoxide_for(d), &o, p),
        DeviceKind::SmartPlug => check_plug(&rules.smart_plug_for(d), &o, p),
        _ => {}
    }
}

fn check_linkage(config: &Config, l: &Linkage, at: KeyPath, p: &mut Problems) {
    let want = l.action.target_kind();
    let fitting: Vec<&str> = config.devices_of(want).map(|d| d.id.as_str()).collect();
    if l.own_plug && l.action != LinkageAction::SwitchOff {
        p.push(
            at.key("own_plug"),
            format!(
                "own_plug only applies to action = \"switch_off\"; remove it from this {} linkage",
                l.action.as_str()
            ),
        );
    }
    if l.targets.is_empty() && !l.own_plug {
        let or_own = if l.action == LinkageAction::SwitchOff {
            ", or set own_plug = true to switch off the alert's own plug"
        } else {
            ""
        };
        p.push(
            at.key("targets"),
            format!(
                "list at least one {want} device{or_own}; {want} devices: {}",
                list(fitting.iter().copied())
            ),
        );
    }
    for (j, id) in l.targets.iter().enumerate() {
        let here = at.key("targets").index(j);
        match config.device(id) {
            None => p.push(
                here,
                format!(
                    "unknown device \"{id}\"{}; {want} devices: {}",
                    did_you_mean(id, fitting.iter().copied()),
                    list(fitting.iter().copied())
                ),
            ),
            Some(d) if d.kind != want => p.push(
                here,
                format!(
                    "device \"{id}\" is a {}, but {} drives {want} devices; use one of: {}",
                    d.kind,
                    l.action.as_str(),
                    list(fitting.iter().copied())
                ),
            ),
            Some(_) => {}
        }
    }
    match &l.message {
        Some(_) if want != DeviceKind::PaSpeaker => p.push(
            at.key("message"),
            "message only applies to action = \"play_pa\"; remove it",
        ),
        Some(m) if m.trim().is_empty() => p.push(
            at.key("message"),
            "write the announcement, or remove `message` to use the default one",
        ),
        _ => {}
    }
}
