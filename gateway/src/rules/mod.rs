//! Hazard rules: readings in, alert signals out.
//!
//! The [`Engine`] holds, per device, the evaluators' history and one
//! [`condition::Condition`] per alert kind. It is synchronous and owns no I/O or clock: the
//! caller passes the monotonic `now` (a `tokio::time::Instant`, so tests run on paused time)
//! and the reading's wall-clock receive time (for local time-of-day rules).
//!
//! Output [`Signal`]s are edges — raise, update (level change), clear — for one
//! (device, alert kind); the alert lifecycle turns them into alert records.

pub mod condition;
pub mod hazards;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_config::{AlertKind, Config, DeviceKind, Level};
use tokio::time::Instant;

use crate::ingest::decode::{Decoded, Values};
pub use condition::Change;
use condition::{Condition, Timing};
pub use hazards::Cause;
use hazards::{BatteryReading, EbikeEval, HeatEval, Wish};

/// A decoded reading from one device, as the ingest stage hands it over.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Index of the device in `Config::devices`.
    pub device: usize,
    /// Gateway receive time (wall clock): what alerts are stamped and ordered with.
    pub at: DateTime<Utc>,
    /// Gateway receive time (monotonic): what durations are measured with.
    pub now: Instant,
    pub decoded: Decoded,
}

/// An edge of one (device, alert kind) condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub device: usize,
    pub kind: AlertKind,
    pub change: Change,
    /// Why (empty on clear).
    pub causes: Vec<Cause>,
    /// The device's latest values: the evidence.
    pub values: Values,
}

#[derive(Debug, Default)]
struct DeviceState {
    conditions: HashMap<AlertKind, Condition>,
    heat: HeatEval,
    ebike: EbikeEval,
    /// Last message of any kind (monotonic); offline is measured from here.
    last_seen: Option<Instant>,
    /// Latest value of every field, merged across messages.
    values: Values,
    /// When this device's last leak cleared, for the repeated-leak escalation.
    leak_cleared_at: Option<Instant>,
}

/// The rules of one gateway.
pub struct Engine {
    config: Arc<Config>,
    devices: Vec<DeviceState>,
    /// Devices are considered seen at start-up, so offline is measured from then.
    started: Instant,
}

impl Engine {
    pub fn new(config: Arc<Config>, now: Instant) -> Self {
        let devices = config
            .devices
            .iter()
            .map(|_| DeviceState::default())
            .collect();
        Engine {
            config,
            devices,
            started: now,
        }
    }

    /// Marks a condition active after a restart (its alert was reloaded from the store).
    pub fn restore(&mut self, device: usize, kind: AlertKind, level: Level) {
        let timing = self.timing_for(kind);
        if let Some(d) = self.devices.get_mut(device) {
            d.conditions
                .entry(kind)
                .or_insert_with(|| Condition::new(timing))
                .restore_active(level);
        }
    }

    /// Applies one reading.
    pub fn on_reading(&mut self, r: &Reading) -> Vec<Signal> {
        let mut out = Vec::new();
        let Some(state) = self.devices.get_mut(r.device) else {
            return out;
        };
        state.last_seen = Some(r.now);
        state.values.merge(&r.decoded.values);
        let offline = Wish::flag(
            r.decoded.online == Some(false),
            self.config.rules.device.offline_level,
            Cause::Offline { silent_s: 0 },
        );
        self.apply(r.device, AlertKind::DeviceOffline, offline, r.now, &mut out);
        self.health(r, &mut out);
        self.hazards(r, &mut out);
        out
    }

    /// Advances timers: debounces that matured, clear-holds that elapsed, devices that
    /// went silent, charging sessions that ran too long. Call about once a second.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Signal> {
        let mut out = Vec::new();
        for i in 0..self.devices.len() {
            self.check_offline(i, now, &mut out);
            self.tick_ebike(i, now, &mut out);
            let values = self.devices[i].values.clone();
            for (kind, cond) in &mut self.devices[i].conditions {
                if let Some(change) = cond.tick(now) {
                    out.push(Signal {
                        device: i,
                        kind: *kind,
                        change,
                        causes: Vec::new(),
                        values: values.clone(),
                    });
                }
            }
        }
        for s in &out {
            self.note_clear(s, now);
        }
        out
    }

    fn health(&mut self, r: &Reading, out: &mut Vec<Signal>) {
        let config = self.config.clone();
        let rule = &config.rules.device;
        let v = &r.decoded.values;
        if v.battery_low.is_some() || v.battery_pct.is_some() {
            let active = self.is_active(r.device, AlertKind::BatteryLow);
            let limit = f64::from(rule.battery_low_pct) + if active { 5.0 } else { 0.0 };
            let low = v.battery_low == Some(true) || v.battery_pct.is_some_and(|p| p < limit);
            let wish = Wish::flag(
                low,
                rule.battery_low_level,
                Cause::BatteryLow {
                    battery_pct: v.battery_pct,
                },
            );
            self.apply(r.device, AlertKind::BatteryLow, wish, r.now, out);
        }
        if let Some(t) = v.tamper {
            let wish = Wish::flag(t, rule.tamper_level, Cause::Tamper);
            self.apply(r.device, AlertKind::Tamper, wish, r.now, out);
        }
    }

    fn hazards(&mut self, r: &Reading, out: &mut Vec<Signal>) {
        let config = self.config.clone();
        let device = &config.devices[r.device];
        let rules = &config.rules;
        let v = &r.decoded.values;
        match device.kind {
            DeviceKind::Smoke => {
                if let Some(smoke) = v.smoke {
                    let wish =
                        Wish::flag(smoke, rules.smoke_for(device).level, Cause::SmokeDetected);
                    self.apply(r.device, AlertKind::Smoke, wish, r.now, out);
                }
            }
            DeviceKind::Heat => {
                if let Some(t) = v.temperature_c {
                    let active = self.is_active(r.device, AlertKind::Heat);
                    let wish =
                        self.devices[r.device]
                            .heat
                            .eval(&rules.heat_for(device), t, active, r.now);
                    self.apply(r.device, AlertKind::Heat, wish, r.now, out);
                }
            }
            DeviceKind::Gas => {
                if v.gas_lel_pct.is_some() || v.gas.is_some() {
                    let active = self.level(r.device, AlertKind::Gas);
                    let wish = hazards::gas(&rules.gas_for(device), v.gas_lel_pct, v.gas, active);
                    self.apply(r.device, AlertKind::Gas, wish, r.now, out);
                }
            }
            DeviceKind::WaterLeak => {
                if let Some(leak) = v.water_leak {
                    let wish = self.water_leak(r.device, leak, r.now);
                    self.apply(r.device, AlertKind::WaterLeak, wish, r.now, out);
                }
            }
            DeviceKind::EbikeBattery => self.ebike(r, out),
            DeviceKind::Sos => {
                if v.pressed == Some(true) {
                    // Every press is an alarm edge: never debounced, never cleared by a
                    // release (staff resolve it); a press on an active alert updates it.
                    out.push(Signal {
                        device: r.device,
                        kind: AlertKind::Sos,
                        change: Change::Raise(rules.sos_for(device).level),
                        causes: vec![Cause::SosPressed],
                        values: self.devices[r.device].values.clone(),
                    });
                }
            }
            DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker => {}
        }
    }

    fn water_leak(&self, device: usize, leak: bool, now: Instant) -> Wish {
        let rule = self
            .config
            .rules
            .water_leak_for(&self.config.devices[device]);
        let mut wish = Wish::flag(leak, rule.level, Cause::WaterLeak);
        let window = Duration::from_secs(u64::from(rule.escalate_within_min) * 60);
        let recent = self.devices[device]
            .leak_cleared_at
            .is_some_and(|t| now.duration_since(t) <= window);
        let escalated = self.level(device, AlertKind::WaterLeak) == Some(rule.escalate_level)
            && rule.escalate_level != rule.level;
        if leak && (recent || escalated) {
            wish.level = Some(rule.escalate_level);
            wish.causes.push(Cause::WaterLeakRepeated {
                within_min: rule.escalate_within_min,
            });
        }
        wish
    }

    fn ebike(&mut self, r: &Reading, out: &mut Vec<Signal>) {
        let config = self.config.clone();
        let device = &config.devices[r.device];
        let rule = config.rules.ebike_battery_for(device);
        let v = &r.decoded.values;
        let reading = BatteryReading {
            temp_c: v.battery_temp_c,
            voltage_v: v.voltage_v,
            charging: v.charging,
            present: v.present,
        };
        let active = self.is_active(r.device, AlertKind::EbikeBattery);
        let wish = self.devices[r.device]
            .ebike
            .eval(&rule, reading, active, r.now);
        self.apply(r.device, AlertKind::EbikeBattery, wish, r.now, out);
        if let Some(present) = v.present {
            let local = r.at.with_timezone(&config.site.tz()).time();
            let wish = self.devices[r.device].ebike.removal(&rule, present, local);
            self.apply(r.device, AlertKind::BatteryRemoved, wish, r.now, out);
        }
    }

    fn tick_ebike(&mut self, i: usize, now: Instant, out: &mut Vec<Signal>) {
        let config = self.config.clone();
        let device = &config.devices[i];
        if device.kind != DeviceKind::EbikeBattery {
            return;
        }
        let active = self.is_active(i, AlertKind::EbikeBattery);
        let wish = self.devices[i]
            .ebike
            .tick(&config.rules.ebike_battery_for(device), active, now);
        // Only time-based causes can appear on a tick; don't clear on a tick.
        if wish.level.is_some() {
            self.apply(i, AlertKind::EbikeBattery, wish, now, out);
        }
    }

    fn check_offline(&mut self, i: usize, now: Instant, out: &mut Vec<Signal>) {
        let device = &self.config.devices[i];
        let rule = &self.config.rules.device;
        let limit = Duration::from_secs(
            u64::from(device.heartbeat_s()) * u64::from(rule.offline_after_heartbeats),
        );
        let since = self.devices[i].last_seen.unwrap_or(self.started);
        let silent = now.duration_since(since);
        if silent >= limit && !self.is_active(i, AlertKind::DeviceOffline) {
            let wish = Wish::flag(
                true,
                rule.offline_level,
                Cause::Offline {
                    silent_s: silent.as_secs(),
                },
            );
            self.apply(i, AlertKind::DeviceOffline, wish, now, out);
        }
    }

    fn apply(
        &mut self,
        device: usize,
        kind: AlertKind,
        wish: Wish,
        now: Instant,
        out: &mut Vec<Signal>,
    ) {
        let timing = self.timing_for(kind);
        let state = &mut self.devices[device];
        let cond = state
            .conditions
            .entry(kind)
            .or_insert_with(|| Condition::new(timing));
        if let Some(change) = cond.observe(wish.level, wish.urgent, now) {
            let signal = Signal {
                device,
                kind,
                change,
                causes: wish.causes,
                values: state.values.clone(),
            };
            self.note_clear(&signal, now);
            out.push(signal);
        }
    }

    fn note_clear(&mut self, s: &Signal, now: Instant) {
        if s.kind == AlertKind::WaterLeak && s.change == Change::Clear {
            self.devices[s.device].leak_cleared_at = Some(now);
        }
    }

    fn timing_for(&self, kind: AlertKind) -> Timing {
        let t = &self.config.rules.timing;
        let debounce = Duration::from_secs(t.debounce_s.into());
        let clear_hold = Duration::from_secs(t.clear_hold_s.into());
        match kind {
            // Back online = resolved at once.
            AlertKind::DeviceOffline => Timing {
                debounce: Duration::ZERO,
                clear_hold: Duration::ZERO,
            },
            _ => Timing {
                debounce,
                clear_hold,
            },
        }
    }

    fn is_active(&self, device: usize, kind: AlertKind) -> bool {
        self.level(device, kind).is_some()
    }

    fn level(&self, device: usize, kind: AlertKind) -> Option<Level> {
        self.devices.get(device)?.conditions.get(&kind)?.level()
    }
}
