//! `[rules]`: alert thresholds, levels, timing and linkage. Everything has
//! a default, so an empty `[rules]` (or none at all) is valid.

use super::{AlertKind, Device, HhMm, Level, Thresholds, TimeWindow};
use serde::{Deserialize, Serialize};

/// `[rules]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// `[rules.timing]`: debounce, clear hold, escalation.
    pub timing: Timing,
    /// `[rules.smoke]`.
    pub smoke: SmokeRule,
    /// `[rules.heat]`.
    pub heat: HeatRule,
    /// `[rules.gas]`.
    pub gas: GasRule,
    /// `[rules.water_leak]`.
    pub water_leak: WaterLeakRule,
    /// `[rules.ebike_battery]`.
    pub ebike_battery: EbikeBatteryRule,
    /// `[rules.sos]`.
    pub sos: SosRule,
    /// `[rules.carbon_monoxide]`.
    pub carbon_monoxide: CarbonMonoxideRule,
    /// `[rules.smart_plug]`.
    pub smart_plug: SmartPlugRule,
    /// `[rules.device]`: offline, low battery and tamper alerts.
    pub device: DeviceHealthRule,
    /// `[[rules.linkage]]`: what actuators do when an alert is raised.
    pub linkage: Vec<Linkage>,
}

impl Rules {
    /// The smoke rule for `device` (with its `thresholds` applied).
    pub fn smoke_for(&self, device: &Device) -> SmokeRule {
        self.smoke.merged(device.thresholds.as_ref())
    }

    /// The heat rule for `device` (with its `thresholds` applied).
    pub fn heat_for(&self, device: &Device) -> HeatRule {
        self.heat.merged(device.thresholds.as_ref())
    }

    /// The gas rule for `device` (with its `thresholds` applied).
    pub fn gas_for(&self, device: &Device) -> GasRule {
        self.gas.merged(device.thresholds.as_ref())
    }

    /// The water-leak rule for `device` (with its `thresholds` applied).
    pub fn water_leak_for(&self, device: &Device) -> WaterLeakRule {
        self.water_leak.merged(device.thresholds.as_ref())
    }

    /// The e-bike battery rule for `device` (with its `thresholds` applied).
    pub fn ebike_battery_for(&self, device: &Device) -> EbikeBatteryRule {
        self.ebike_battery.merged(device.thresholds.as_ref())
    }

    /// The SOS rule for `device` (with its `thresholds` applied).
    pub fn sos_for(&self, device: &Device) -> SosRule {
        self.sos.merged(device.thresholds.as_ref())
    }

    /// The carbon monoxide rule for `device` (with its `thresholds` applied).
    pub fn carbon_monoxide_for(&self, device: &Device) -> CarbonMonoxideRule {
        self.carbon_monoxide.merged(device.thresholds.as_ref())
    }

    /// The smart plug rule for `device` (with its `thresholds` applied).
    pub fn smart_plug_for(&self, device: &Device) -> SmartPlugRule {
        self.smart_plug.merged(device.thresholds.as_ref())
    }

    /// Linkages that fire for an alert of `kind` at `level`.
    pub fn linkages_for(&self, kind: AlertKind, level: Level) -> impl Iterator<Item = &Linkage> {
        self.linkage
            .iter()
            .filter(move |l| l.on == kind && level >= l.min_level)
    }
}

fn pick<T: Copy>(over: Option<&Thresholds>, get: impl Fn(&Thresholds) -> Option<T>, base: T) -> T {
    over.and_then(get).unwrap_or(base)
}

/// `[rules.timing]`: timing common to all sensor rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// A condition must hold this long before an alert is raised
    /// (0..=60 s). Default 2.
    pub debounce_s: u32,
    /// A condition must be gone this long before an alert clears
    /// (0..=3600 s). Default 30.
    pub clear_hold_s: u32,
    /// Unacknowledged red/orange alerts escalate after this long
    /// (10..=86400 s). Default 180.
    pub escalate_after_s: u32,
    /// An actuator must confirm a command within this long (1..=300 s).
    /// Default 10.
    pub actuator_confirm_s: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            debounce_s: 2,
            clear_hold_s: 30,
            escalate_after_s: 180,
            actuator_confirm_s: 10,
        }
    }
}

/// `[rules.smoke]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmokeRule {
    /// Level of a smoke alarm. Default red.
    pub level: Level,
}

impl Default for SmokeRule {
    fn default() -> Self {
        Self { level: Level::Red }
    }
}

impl SmokeRule {
    /// This rule with a device's overrides applied.
    pub fn merged(&self, t: Option<&Thresholds>) -> Self {
        Self {
            level: pick(t, |t| t.level, self.level),
        }
    }
}

/// `[rules.sos]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SosRule {
    /// Level of an SOS button press. Default red.
    pub level: Level,
}

impl Default for SosRule {
    fn default() -> Self {
        Self { level: Level::Red }
    }
}

impl SosRule {
    /// This rule with a device's overrides applied.
    pub fn merged(&self, t: Option<&Thresholds>) -> Self {
        Self {
            level: pick(t, |t| t.level, self.level),
        }
    }
}

/// `[rules.heat]`: fixed-temperature and rate-of-rise heat detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeatRule {
    /// Alarm at or above this temperature, °C (30..=120). Default 57.
    pub fixed_c: f64,
    /// Alarm when the temperature rises faster than this, °C per minute
    /// (0 < x <= 60). Default 8.
    pub rate_c_per_min: f64,
    /// Window over which the rate is measured, seconds (10..=3600).
    /// Default 60.
    pub rate_window_s: u32,
    /// Clear only when this far below `fixed_c`, °C (0 <= x < 20).
    /// Default 3.
    pub hysteresis_c: f64,
    /// Alert level. Default red.
    pub level: Level,
}

impl Default for HeatRule {
    fn default() -> Self {
        Self {
            fixed_c: 57.0,
            rate_c_per_min: 8.0,
            rate_window_s: 60,
            hysteresis_c: 3.0,
            level: Level::Red,
        }
    }
}

impl HeatRule {
    /// This rule with a device's overrides applied.
    pub fn merged(&self, t: Option<&Thresholds>) -> Self {
        Self {
            fixed_c: pick(t, |t| t.fixed_c, self.fixed_c),
            rate_c_per_min: pick(t, |t| t.rate_c_per_min, self.rate_c_per_min),
            rate_window_s: pick(t, |t| t.rate_window_s, self.rate_window_s),
            hysteresis_c: pick(t, |t| t.hysteresis_c, self.hysteresis_c),
            level: pick(t, |t| t.level, self.level),
        }
    }
}

/// `[rules.gas]`: two-stage combustible gas alarm, in % of the lower
/// explosive limit (LEL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GasRule {
    /// First stage, % LEL (0 < low < high). Default 10.
    pub low_lel_pct: f64,
    /// Second stage, % LEL (low < high <= 100). Default 25.
    pub high_lel_pct: f64,
    /// Clear only when this far below a stage, % LEL (0 <= x < low).
    /// Default 2.
    pub hysteresis_lel_pct: f64,
    /// Level of the first stage. Default orange.
    pub low_level: Level,
    /// Level of the second stage (at least `low_level`). Default red.
    pub high_level: Level,
}

impl Default for GasRule {
    fn default() -> Self {
        Self {
            low_lel_pct: 10.0,
            high_lel_pct: 25.0,
            hysteresis_lel_pct: 2.0,
            low_level: Level::Orange,
            high_level: Level::Red,
        }
    }
}

impl GasRule {
    /// This rule with a device's overrides applied.
    pub fn merged(&self, t: Option<&Thresholds>) -> Self {
        Self {
            low_lel_pct: pick(t, |t| t.low_lel_pct, self.low_lel_pct),
            high_lel_pct: pick(t, |t| t.high_lel_pct, self.high_lel_pct),
            hysteresis_lel_pct: pick(t, |t| t.hysteresis_lel_pct, self.hysteresis_lel_pct),
            low_level: pick(t, |t| t.low_level, self.low_level),
            high_level: pick(t, |t| t.high_level, self.high_level),
        }
    }
}

/// `[rules.water_leak]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaterLeakRule {
    /// When the same sensor reports a leak again within this many minutes of
    /// its previous leak clearing (water keeps coming back), the new alert is
    /// raised at `escalate_level` (1..=1440). Default 10.
    pub escalate_within_min: u32,
    /// Level of a leak. Default orange.
    pub level: Level,
    /// Level after escalation. Default red.
    pub escalate_level: Level,
}

impl Default for WaterLeakRule {
    fn default() -> Self {
        Self {
            escalate_within_min: 10,
            level: Level::Orange,
            escalate_level: Level::Red,
        }
    }
}

impl WaterLeakRule {
    /// This rule with a device's overrides applied.
    pub fn merged(&self, t: Option<&Thresholds>) -> Self {
        Self {
            escalate_within_min: pick(t, |t| t.escalate_within_min, self.escalate_within_min),
            level: pick(t, |t| t.level, self.level),
            escalate_level: pick(t, |t| t.escalate_level, self.escalate_level),
        }
    }
}

/// `[rules.ebike_battery]`: e-bike battery and charging safety.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbikeBatteryRule {
    /// Warning at or above this battery temperature, °C (30..=120).
    /// Default 60.
    pub temp_c: f64,
    /// Warning when the temperature rises faster than this, °C per minute
    /// over `rise_window_s` (> 0). Default 1.0.
    pub rise_c_per_min: f64,
    /// Window for `rise_c_per_min`, seconds (10..=3600). Default 300.
    pub rise_window_s: u32,
    /// Thermal runaway when the temperature rises faster than this, °C per
    /// second (> 0). Default 1.0.
    pub runaway_c_per_s: f64,
    /// Warning when the pack voltage drops by this % during charging
    /// (0 < x < 100). Default 25.
    pub voltage_drop_pct: f64,
    /// Warning when charging lasts longer than this, hours (0 < x <= 48).
    /// Default 8.
    pub max_charging_h: f64,
    /// Unplugging a battery in this local time window raises a theft
    /// alert. Default 22:00–06:00.
    pub theft_window: TimeWindow,
    /// Level of warnings (temperature, rise, voltage, overlong charging).
    /// Default orange.
    pub level: Level,
    /// Level of thermal runaway (at least `level`). Default red.
    pub runaway_level: Level,
    /// Level of a possible theft. Default yellow.
    pub theft_level: Level,
}

impl Default for EbikeBatteryRule {
    fn default() -> Self {
        Self {
            temp_c: 60.0,
            rise_c_per_min: 1.0,
            rise_window_s: 300,
            runaway_c_per_s: 1.0,
            voltage_drop_pct: 25.0,
            max_charging_h: 8.0,
            theft_window: TimeWindow {
                from: HhMm {
                    hour: 22,
                    minute: 0,
                },
                to: HhMm { hour: 6, minute: 0 },
            },
            level: Level::Orange,
            runaway_level: Level::Red,
            theft_level: Level::Yellow,
        }
    }
}

impl EbikeBatteryRule {
    /// This rule with a device's overrides applied.
    pub fn merged(&self, t: Option<&Thresholds>) -> Self {
        Self {
            temp_c: pick(t, |t| t.temp_c, self.temp_c),
            rise_c_per_min: pick(t, |t| t.rise_c_per_min, self.rise_c_per_min),
            rise_window_s: pick(t, |t| t.rise_window_s, self.rise_window_s),
            runaway_c_per_s: pick(t, |t| t.runaway_c_per_s, self.runaway_c_per_s),
            voltage_drop_pct: pick(t, |t| t.voltage_drop_pct, self.voltage_drop_pct),
            max_charging_h: pick(t, |t| t.max_charging_h, self.max_charging_h),
            theft_window: pick(t, |t| t.theft_window, self.theft_window),
            level: pick(t, |t| t.level, self.level),
            runaway_level: pick(t, |t| t.runaway_level, self.runaway_level),
            theft_level: pick(t, |t| t.theft_level, self.theft_level),
        }
    }
}

/// `[rules.carbon_monoxide]`: CO alarms on the EN 50291-1 alarm points (50 ppm: alarm
/// after 60–90 min; 100 ppm: after 10–40 min; 300 ppm: within 3 min), which household CO
/// alarms sold in China follow too. The gateway raises the alarm at the earliest of each
/// window, warns before it, and takes the device's own `carbon_monoxide` flag as the alarm
/// whatever the concentration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CarbonMonoxideRule {
    /// CO present: a warning at or above this, ppm (> 0). Default 30.
    pub warn_ppm: f64,
    /// First alarm point, ppm (warn_ppm < low < mid). Default 50.
    pub low_ppm: f64,
    /// Minutes at or above `low_ppm` before the alarm (1..=240). Default 60.
    pub low_after_min: u32,
    /// Second alarm point, ppm (low < mid < high). Default 100.
    pub mid_ppm: f64,
    /// Minutes at or above `mid_ppm` before the alarm (1..=240). Default 10.
    pub mid_after_min: u32,
    /// Immediate alarm at or above this, ppm (mid < high <= 10000). Default 300.
    pub high_ppm: f64,
    /// Clear only when this far below a point, ppm (0 <= x < warn_ppm). Default 5.
    pub hysteresis_ppm: f64,
    /// Level of the warning (CO present). Default yellow.
    pub warn_level: Level,
    /// Level while at an alarm point but not yet for its time. Default orange.
    pub pre_alarm_level: Level,
    /// Level of the alarm (and of the device's own flag). Default red.
    pub level: Level,
}

impl Default for CarbonMonoxideRule {
    fn default() -> Self {
        Self {
            warn_ppm: 30.0,
            low_ppm: 50.0,
            low_after_min: 60,
            mid_ppm: 100.0,
            mid_after_min: 10,
            high_ppm: 300.0,
            hysteresis_ppm: 5.0,
            warn_level: Level::Yellow,
            pre_alarm_level: Level::Orange,
            level: Level::Red,
        }
    }
}

impl CarbonMonoxideRule {
    /// This rule with a device's overrides applied.
    pub fn merged(&self, t: Option<&Thresholds>) -> Self {
        Self {
            warn_ppm: pick(t, |t| t.warn_ppm, self.warn_ppm),
            low_ppm: pick(t, |t| t.low_ppm, self.low_ppm),
            mid_ppm: pick(t, |t| t.mid_ppm, self.mid_ppm),
            high_ppm: pick(t, |t| t.high_ppm, self.high_ppm),
            warn_level: pick(t, |t| t.warn_level, self.warn_level),
            level: pick(t, |t| t.level, self.level),
            ..self.clone()
        }
    }
}

/// `[rules.smart_plug]`: a smart plug or charging socket in the charging shed. Over-current
/// and an overheating plug are dangers (a short, a failing charger, a battery in thermal
/// trouble); over-power, a temperature rising while charging and charging past the limit
/// are warnings. Link `switch_off` to cut the plug.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmartPlugRule {
    /// A load at or above this is charging, W (> 0, below max_power_w). Default 10.
    pub charging_min_w: f64,
    /// Over-current at or above this, A (0 < x <= 63); the plug's rating. Default 10.
    pub max_current_a: f64,
    /// Over-power at or above this, W (0 < x <= 20000): more than an e-bike charger
    /// draws. Default 1000.
    pub max_power_w: f64,
    /// Overheating plug at or above this, °C (30..=120). Default 70.
    pub max_temp_c: f64,
    /// Warning when the plug's temperature rises faster than this while charging, °C per
    /// minute over `rise_window_s` (> 0). Default 2.
    pub rise_c_per_min: f64,
    /// Window for `rise_c_per_min`, seconds (10..=3600). Default 300.
    pub rise_window_s: u32,
    /// Warning when one charging session lasts longer than this, hours (0 < x <= 48).
    /// Default 8.
    pub max_charging_h: f64,
    /// Level of warnings (over-power, rising temperature, charging too long). Default
    /// orange.
    pub level: Level,
    /// Level of over-current and an overheating plug (at least `level`). Default red.
    pub danger_level: Level,
}

impl Default for SmartPlugRule {
    fn default() -> Self {
        Self {
            charging_min_w: 10.0,
            max_current_a: 10.0,
            max_power_w: 1000.0,
            max_temp_c: 70.0,
            rise_c_per_min: 2.0,
            rise_window_s: 300,
            max_charging_h: 8.0,
            level: Level::Orange,
            danger_level: Level::Red,
        }
    }
}

impl SmartPlugRule {
    /// This rule with a device's overrides applied.
    pub fn merged(&self, t: Option<&Thresholds>) -> Self {
        Self {
            charging_min_w: pick(t, |t| t.charging_min_w, self.charging_min_w),
            max_current_a: pick(t, |t| t.max_current_a, self.max_current_a),
            max_power_w: pick(t, |t| t.max_power_w, self.max_power_w),
            max_temp_c: pick(t, |t| t.max_temp_c, self.max_temp_c),
            rise_c_per_min: pick(t, |t| t.rise_c_per_min, self.rise_c_per_min),
            rise_window_s: pick(t, |t| t.rise_window_s, self.rise_window_s),
            max_charging_h: pick(t, |t| t.max_charging_h, self.max_charging_h),
            level: pick(t, |t| t.level, self.level),
            danger_level: pick(t, |t| t.danger_level, self.danger_level),
        }
    }
}

/// `[rules.device]`: device health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceHealthRule {
    /// A device is offline after missing this many heartbeats (1..=100).
    /// Default 3.
    pub offline_after_heartbeats: u32,
    /// Level of an offline device. Default yellow.
    pub offline_level: Level,
    /// Battery below this % is low (1..=99). Default 15.
    pub battery_low_pct: u8,
    /// Level of a low battery. Default blue.
    pub battery_low_level: Level,
    /// Level of a tamper report. Default yellow.
    pub tamper_level: Level,
}

impl Default for DeviceHealthRule {
    fn default() -> Self {
        Self {
            offline_after_heartbeats: 3,
            offline_level: Level::Yellow,
            battery_low_pct: 15,
            battery_low_level: Level::Blue,
            tamper_level: Level::Yellow,
        }
    }
}

/// `[[rules.linkage]]`: drive actuators when an alert is raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linkage {
    /// The alert kind that triggers it, e.g. `"gas"`.
    pub on: AlertKind,
    /// Fire only for alerts at or above this level. Default orange.
    #[serde(default = "default_min_level")]
    pub min_level: Level,
    /// What to do.
    pub action: LinkageAction,
    /// Ids of the actuators: valves for `close_valve`, sirens for
    /// `sound_siren`, PA speakers for `play_pa`, smart plugs for `switch_off`.
    #[serde(default)]
    pub targets: Vec<String>,
    /// `switch_off` only: also switch off the alert's own plug — the smart plug that
    /// raised it, or the `plug` of the e-bike battery monitor that raised it. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_plug: bool,
    /// `play_pa` only: the announcement (default: generated from the alert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn default_min_level() -> Level {
    Level::Orange
}

/// An actuator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkageAction {
    /// Close gas valves (targets: `valve` devices).
    CloseValve,
    /// Sound sirens (targets: `siren` devices).
    SoundSiren,
    /// Play an announcement (targets: `pa_speaker` devices).
    PlayPa,
    /// Switch smart plugs off: cut a charger's power (targets: `smart_plug` devices).
    SwitchOff,
}

impl LinkageAction {
    /// The device kind this action drives.
    pub fn target_kind(self) -> super::DeviceKind {
        match self {
            LinkageAction::CloseValve => super::DeviceKind::Valve,
            LinkageAction::SoundSiren => super::DeviceKind::Siren,
            LinkageAction::PlayPa => super::DeviceKind::PaSpeaker,
            LinkageAction::SwitchOff => super::DeviceKind::SmartPlug,
        }
    }

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkageAction::CloseValve => "close_valve",
            LinkageAction::SoundSiren => "sound_siren",
            LinkageAction::PlayPa => "play_pa",
            LinkageAction::SwitchOff => "switch_off",
        }
    }
}
