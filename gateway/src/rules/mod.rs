//! Hazard rules: readings in, alert signals out.
//!
//! The [`Engine`] holds, per device, the evaluators' history and one
//! [`condition::Condition`] per alert kind. It is synchronous and owns no I/O or clock: the
//! caller passes the monotonic `now` (a `tokio::time::Instant`, so tests run on paused time)
//! and the reading's wall-clock receive time (for local time-of-day rules).
//!
//! Output [`Signal`]s are edges — raise, update (level change), clear — for one
//! (device, alert kind); the alert lifecycle turns them into alert records. A staff resolve
//! comes back as a [`RuleReset`] ([`reset`]): the condition is reset so the detector is never
//! left deaf.

pub mod co;
pub mod condition;
pub mod hazards;
pub mod plug;
pub mod reset;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edge_config::{AlertKind, Config, DeviceKind, Level};
use tokio::time::Instant;

use crate::reading::Values;
use co::CoEval;
pub use condition::Change;
use condition::{Condition, Timing};
pub use hazards::Cause;
use hazards::{BatteryReading, EbikeEval, HeatEval, Wish};
use plug::{PlugEval, PlugReading};
pub use reset::{ResetReceiver, ResetSender, RuleReset};

pub use crate::reading::Reading;

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
    co: CoEval,
    plug: PlugEval,
    /// Last message of any kind (monotonic); offline is measured from here.
    last_seen: Option<Instant>,
    /// Latest value of every field, merged across messages.
    values: Values,
    /// When this device's last leak cleared, for the repeated-leak escalation.
    leak_cleared_at: Option<Instant>,
    /// The causes of each kind's latest hazard wish: the evidence of an alert raised anew
    /// by a reset, which has no reading of its own.
    causes: HashMap<AlertKind, Vec<Cause>>,
}

/// The rules of one gateway.
pub struct Engine {
    config: Arc<Config>,
    devices: Vec<DeviceState>,
    /// Devices are considered seen at start-up, so offline is measured from then.
    started: Instant,
    /// Staff resolves from the alert task, and where the engine records which conditions
    /// the sensors report (see [`reset`]). `None`: no one resolves by hand (tests).
    resets: Option<ResetReceiver>,
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
            resets: None,
        }
    }

    /// Takes staff resolves from `resets` from now on (applied before each reading and tick)
    /// and records there which conditions the sensors report.
    pub fn set_resets(&mut self, resets: ResetReceiver) {
        for (device, d) in self.config.devices.iter().zip(&self.devices) {
            for (kind, cond) in &d.conditions {
                resets.set_reporting(&device.id, *kind, cond.reports());
            }
        }
        self.resets = Some(resets);
    }

    /// The configuration the engine runs on.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Switches to `config` (a reload): readings from now on carry its device indexes. Each
    /// device that is still configured with the same kind keeps its state (conditions,
    /// timers, latest values), found by id; a new device starts as if just seen; a removed
    /// one (or one whose kind changed) is forgotten — the alert task resolves its alerts.
    /// Thresholds are read from the configuration on every evaluation, so a changed one
    /// takes effect with the next reading or tick.
    pub fn reconfigure(&mut self, config: Arc<Config>, now: Instant) {
        let mut old: HashMap<String, (edge_config::DeviceKind, DeviceState)> = self
            .config
            .devices
            .iter()
            .map(|d| (d.id.clone(), d.kind))
            .zip(std::mem::take(&mut self.devices))
            .map(|((id, kind), state)| (id, (kind, state)))
            .collect();
        self.devices = config
            .devices
            .iter()
            .map(|d| match old.remove(&d.id) {
                Some((kind, state)) if kind == d.kind => state,
                _ => DeviceState {
                    last_seen: Some(now),
                    ..DeviceState::default()
                },
            })
            .collect();
        if let Some(r) = &self.resets {
            let keep: std::collections::HashSet<&str> = config
                .devices
                .iter()
                .filter(|d| !old.contains_key(&d.id))
                .map(|d| d.id.as_str())
                .collect();
            r.retain_devices(&keep);
        }
        self.config = config;
    }

    /// Applies the staff resolves that arrived: a condition whose sensor still reports the
    /// hazard raises a new alert at once; any other is forgotten.
    fn apply_resets(&mut self, now: Instant, out: &mut Vec<Signal>) {
        let mut resets = Vec::new();
        if let Some(rx) = self.resets.as_mut() {
            resets.extend(std::iter::from_fn(|| rx.try_recv()));
        }
        for r in resets {
            let Some(device) = self.config.devices.iter().position(|d| d.id == r.device) else {
                continue;
            };
            let state = &mut self.devices[device];
            let Some(cond) = state.conditions.get_mut(&r.kind) else {
                continue;
            };
            let change = cond.reset(r.still_reported, r.level, now);
            let reports = cond.reports();
            tracing::info!(device = r.device, kind = %r.kind, raise = change.is_some(), "rule reset by a staff resolve");
            if let Some(change) = change {
                out.push(Signal {
                    device,
                    kind: r.kind,
                    change,
                    causes: state.causes.get(&r.kind).cloned().unwrap_or_default(),
                    values: state.values.clone(),
                });
            }
            self.note_reporting(device, r.kind, reports);
        }
    }

    fn note_reporting(&self, device: usize, kind: AlertKind, reports: bool) {
        if let (Some(r), Some(d)) = (&self.resets, self.config.devices.get(device)) {
            r.set_reporting(&d.id, kind, reports);
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
            self.note_reporting(device, kind, true);
        }
    }

    /// Applies one reading.
    pub fn on_reading(&mut self, r: &Reading) -> Vec<Signal> {
        let mut out = Vec::new();
        self.apply_resets(r.now, &mut out);
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
        self.apply_resets(now, &mut out);
        for i in 0..self.devices.len() {
            self.check_offline(i, now, &mut out);
            self.tick_timed(i, now, &mut out);
            let values = self.devices[i].values.clone();
            for (kind, cond) in &mut self.devices[i].conditions {
                let reported = cond.reports();
                let change = cond.tick(now);
                if cond.reports() != reported {
                    if let Some(r) = &self.resets {
                        r.set_reporting(&self.config.devices[i].id, *kind, cond.reports());
                    }
                }
                if let Some(change) = change {
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
                if v.temperature_c.is_some() || v.heat.is_some() {
                    let active = self.is_active(r.device, AlertKind::Heat);
                    let wish = self.devices[r.device].heat.eval_reading(
                        &rules.heat_for(device),
                        v.temperature_c,
                        v.heat,
                        active,
                        r.now,
                    );
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
            DeviceKind::CarbonMonoxide => {
                if v.co_ppm.is_some() || v.carbon_monoxide.is_some() {
                    let active = self.level(r.device, AlertKind::CarbonMonoxide);
                    let rule = rules.carbon_monoxide_for(device);
                    let co = &mut self.devices[r.device].co;
                    let wish = co.eval(&rule, v.co_ppm, v.carbon_monoxide, active, r.now);
                    self.apply(r.device, AlertKind::CarbonMonoxide, wish, r.now, out);
                }
            }
            DeviceKind::SmartPlug => self.plug(r, out),
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

    fn plug(&mut self, r: &Reading, out: &mut Vec<Signal>) {
        let v = &r.decoded.values;
        let reading = PlugReading {
            power_w: v.power_w,
            current_a: v.current_a,
            voltage_v: v.voltage_v,
            temp_c: v.plug_temp_c,
            on: v.state.as_deref().and_then(|s| match s {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            }),
        };
        let measured = [reading.power_w, reading.current_a, reading.temp_c];
        if measured.iter().all(Option::is_none) && reading.on.is_none() {
            return;
        }
        let config = self.config.clone();
        let rule = config.rules.smart_plug_for(&config.devices[r.device]);
        let active = self.is_active(r.device, AlertKind::SmartPlug);
        let wish = self.devices[r.device]
            .plug
            .eval(&rule, reading, active, r.now);
        self.apply(r.device, AlertKind::SmartPlug, wish, r.now, out);
    }

    /// Time-based causes without a reading: over-long charging (e-bike battery, smart
    /// plug), time at a CO alarm point. A tick never clears: readings do.
    fn tick_timed(&mut self, i: usize, now: Instant, out: &mut Vec<Signal>) {
        let config = self.config.clone();
        let device = &config.devices[i];
        let rules = &config.rules;
        let (kind, wish) = match device.kind {
            DeviceKind::EbikeBattery => {
                let active = self.is_active(i, AlertKind::EbikeBattery);
                let rule = rules.ebike_battery_for(device);
                let wish = self.devices[i].ebike.tick(&rule, active, now);
                (AlertKind::EbikeBattery, wish)
            }
            DeviceKind::SmartPlug => {
                let active = self.is_active(i, AlertKind::SmartPlug);
                let rule = rules.smart_plug_for(device);
                (
                    AlertKind::SmartPlug,
                    self.devices[i].plug.tick(&rule, active, now),
                )
            }
            DeviceKind::CarbonMonoxide => {
                let active = self.level(i, AlertKind::CarbonMonoxide);
                let rule = rules.carbon_monoxide_for(device);
                let wish = self.devices[i].co.tick(&rule, active, now);
                (AlertKind::CarbonMonoxide, wish)
            }
            _ => return,
        };
        if wish.level.is_some() {
            self.apply(i, kind, wish, now, out);
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
        let reported = cond.reports();
        let change = cond.observe(wish.level, wish.urgent, now);
        let reports = cond.reports();
        let Wish { level, causes, .. } = wish;
        let signal = change.map(|change| Signal {
            device,
            kind,
            change,
            causes: causes.clone(),
            values: state.values.clone(),
        });
        if level.is_some() {
            state.causes.insert(kind, causes);
        }
        if let Some(signal) = signal {
            self.note_clear(&signal, now);
            out.push(signal);
        }
        if reports != reported {
            self.note_reporting(device, kind, reports);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Decoded;
    use chrono::Utc;
    use std::path::Path;

    const CONFIG: &str = r#"
[site]
id = "t1"
name = "Test compound"
kind = "compound"

[[locations.buildings]]
id = "b2"
name = "2号楼"
floors = 18
[[locations.buildings.units]]
id = "u3"
name = "3单元"

[[devices]]
id = "gas-1"
kind = "gas"
location = { building = "b2", unit = "u3" }

[rules.timing]
debounce_s = 0
clear_hold_s = 30
"#;

    const GAS_ID: &str = "gas-1";

    fn engine(t0: Instant) -> (Engine, ResetSender) {
        let config = edge_config::parse(CONFIG, "t.toml", Path::new(".")).expect("valid config");
        let mut e = Engine::new(Arc::new(config), t0);
        let (tx, rx) = reset::channel();
        e.set_resets(rx);
        (e, tx)
    }

    fn gas(at: Instant, lel: f64) -> Reading {
        Reading {
            device: 0,
            at: Utc::now(),
            now: at,
            decoded: Decoded {
                values: Values {
                    gas_lel_pct: Some(lel),
                    ..Values::default()
                },
                sensor_ts: None,
                online: None,
            },
        }
    }

    fn changes(signals: &[Signal]) -> Vec<Change> {
        signals.iter().map(|s| s.change).collect()
    }

    fn reset_gas(still_reported: bool) -> RuleReset {
        RuleReset {
            device: GAS_ID.to_owned(),
            kind: AlertKind::Gas,
            level: Level::Red,
            still_reported,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_that_renumbers_devices_keeps_each_ones_state_by_id_and_applies_new_thresholds(
    ) {
        let t0 = Instant::now();
        let (mut e, resets) = engine(t0);
        let s = Duration::from_secs(1);
        assert_eq!(
            changes(&e.on_reading(&gas(t0, 45.0))),
            [Change::Raise(Level::Red)]
        );
        // A smoke detector inserted before the gas detector (now index 1), and a lower
        // low-alarm threshold.
        let text = CONFIG.replace(
            "[[devices]]\nid = \"gas-1\"",
            "[[devices]]\nid = \"smoke-0\"\nkind = \"smoke\"\nlocation = { building = \"b2\", unit = \"u3\" }\n\n[[devices]]\nid = \"gas-1\"",
        ) + "\n[rules.gas]\nlow_lel_pct = 5.0\nhigh_lel_pct = 25.0\n";
        let reloaded = edge_config::parse(&text, "t.toml", Path::new(".")).expect("valid config");
        e.reconfigure(Arc::new(reloaded), t0 + s);
        let at_one = |at, lel| Reading {
            device: 1,
            ..gas(at, lel)
        };
        // Still the same hazard: no new raise for the gas detector at its new index …
        assert!(e.on_reading(&at_one(t0 + 2 * s, 45.0)).is_empty());
        assert!(resets.still_reported(GAS_ID, AlertKind::Gas));
        // … which clears through the new threshold's band (7 %LEL is above the new 5).
        assert_eq!(
            changes(&e.on_reading(&at_one(t0 + 3 * s, 7.0))),
            [Change::Update(Level::Orange)]
        );
        let cleared = e.on_reading(&at_one(t0 + 4 * s, 0.0));
        assert!(cleared.is_empty());
        let signals = e.on_tick(t0 + 40 * s);
        assert_eq!(changes(&signals), [Change::Clear]);
        assert_eq!(signals[0].device, 1, "signals carry the new numbering");
    }

    #[tokio::test(start_paused = true)]
    async fn a_staff_resolve_while_the_gas_persists_raises_a_new_alert_with_its_evidence() {
        let t0 = Instant::now();
        let (mut e, mut resets) = engine(t0);
        let s = Duration::from_secs(1);
        assert_eq!(
            changes(&e.on_reading(&gas(t0, 45.0))),
            [Change::Raise(Level::Red)]
        );
        assert!(resets.still_reported(GAS_ID, AlertKind::Gas));
        assert!(e.on_reading(&gas(t0 + s, 45.0)).is_empty());

        resets.send(reset_gas(true));
        let again = e.on_tick(t0 + 2 * s);
        assert_eq!(changes(&again), [Change::Raise(Level::Red)]);
        assert!(
            matches!(again[0].causes[..], [Cause::GasHighStage { lel_pct, .. }] if lel_pct == 45.0),
            "{:?}",
            again[0].causes
        );
        assert_eq!(again[0].values.gas_lel_pct, Some(45.0));
        // The new alert follows the sensor: nothing while it persists, a clear once it is gone.
        assert!(e.on_reading(&gas(t0 + 3 * s, 45.0)).is_empty());
        assert!(e.on_reading(&gas(t0 + 4 * s, 0.0)).is_empty());
        assert!(!resets.still_reported(GAS_ID, AlertKind::Gas));
        assert_eq!(changes(&e.on_tick(t0 + 34 * s)), [Change::Clear]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_staff_resolve_after_the_gas_is_gone_forgets_the_condition() {
        let t0 = Instant::now();
        let (mut e, mut resets) = engine(t0);
        let s = Duration::from_secs(1);
        e.on_reading(&gas(t0, 45.0));
        e.on_reading(&gas(t0 + s, 0.0));
        assert!(!resets.still_reported(GAS_ID, AlertKind::Gas));
        resets.send(reset_gas(false));
        assert!(e.on_tick(t0 + 2 * s).is_empty());
        assert!(
            e.on_tick(t0 + 60 * s).is_empty(),
            "no clear for the resolved alert"
        );
        assert_eq!(
            changes(&e.on_reading(&gas(t0 + 61 * s, 45.0))),
            [Change::Raise(Level::Red)],
            "the next leak is a new alert"
        );
    }
}
