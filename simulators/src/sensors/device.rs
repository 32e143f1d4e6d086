//! One simulated device: its physical state, its realistic normal behaviour and the payloads
//! it sends in its configured format (shouwang native JSON or zigbee2mqtt).
//!
//! Everything random comes from the device's own ChaCha RNG seeded from `--seed` and the
//! device id, so a run is reproducible whatever order the devices' tasks are scheduled in.

use std::time::Duration;

use edge_config::{Config, Device, DeviceKind, PayloadFormat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between Rust releases).
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The RNG of one named stream (a device id, a scenario) under one seed.
pub fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ stable_hash(name))
}

/// Where an e-bike battery is in its charging cycle (normal behaviour).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cycle {
    /// Parked, not charging, for this many more seconds.
    Idle(f64),
    /// On the charger.
    Charging,
}

/// The state of one simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub id: String,
    pub kind: DeviceKind,
    pub format: PayloadFormat,
    pub state_topic: String,
    pub command_topic: String,
    /// Native devices: `sensors/{id}/heartbeat`.
    pub heartbeat_topic: Option<String>,
    /// zigbee2mqtt devices: `zigbee2mqtt/{name}/availability`.
    pub availability_topic: Option<String>,
    /// The configured heartbeat period.
    pub heartbeat: Duration,
    /// zigbee2mqtt gas detectors raise their own `gas` flag at this %LEL (the device's
    /// configured high stage).
    pub gas_flag_lel_pct: f64,
    pub rng: ChaCha8Rng,

    pub smoke: bool,
    pub temperature_c: f64,
    /// Where the room temperature settles.
    pub ambient_c: f64,
    pub gas_lel_pct: f64,
    pub water_leak: bool,
    pub battery_pct: f64,
    pub tamper: bool,
    pub linkquality: f64,
    pub battery_temp_c: f64,
    pub voltage_v: f64,
    pub current_a: f64,
    pub charging: bool,
    pub present: bool,
    pub pressed: bool,
    /// CO alarms: the concentration, ppm.
    pub co_ppm: f64,
    /// CO alarms raise their own `carbon_monoxide` flag at this ppm (the rules' immediate
    /// alarm point, as an EN 50291 alarm does within minutes at 300 ppm).
    pub co_flag_ppm: f64,
    /// Smart plugs: the charger's load, W, and the plug's own temperature, °C.
    pub power_w: f64,
    pub plug_temp_c: f64,
    /// Smart plugs: the energy meter, kWh.
    pub energy_kwh: f64,
    /// Actuators: `open`/`closed` (valve), `on`/`off` (siren, smart plug), `idle`/`playing`
    /// (PA).
    pub actuator: String,
    cycle: Cycle,
}

/// Full charge of a 48 V pack, volts.
const FULL_V: f64 = 54.6;
/// Charging pack rises towards ambient + this, °C.
const CHARGING_WARMTH_C: f64 = 6.0;

impl SimDevice {
    /// A device of `config` in its normal state, seeded from `seed` and its id.
    pub fn new(config: &Config, device: &Device, seed: u64) -> SimDevice {
        let mut rng = rng_for(seed, &device.id);
        let ambient_c = rng.gen_range(21.0..26.0);
        let (heartbeat_topic, availability_topic) = match device.format {
            PayloadFormat::Native => (Some(format!("sensors/{}/heartbeat", device.id)), None),
            PayloadFormat::Zigbee2mqtt => (
                None,
                Some(format!(
                    "zigbee2mqtt/{}/availability",
                    device.friendly_name()
                )),
            ),
        };
        let actuator = match device.kind {
            DeviceKind::Valve => "open",
            DeviceKind::Siren => "off",
            DeviceKind::PaSpeaker => "idle",
            DeviceKind::SmartPlug => "on",
            _ => "",
        };
        let charging = rng.gen_bool(0.5);
        let idle_s = rng.gen_range(60.0..240.0);
        SimDevice {
            id: device.id.clone(),
            kind: device.kind,
            format: device.format,
            state_topic: device.state_topic(),
            command_topic: device.command_topic(),
            heartbeat_topic,
            availability_topic,
            heartbeat: Duration::from_secs(device.heartbeat_s().into()),
            gas_flag_lel_pct: config.rules.gas_for(device).high_lel_pct,
            smoke: false,
            temperature_c: ambient_c + rng.gen_range(-0.5..0.5),
            ambient_c,
            gas_lel_pct: rng.gen_range(0.0..1.0),
            water_leak: false,
            battery_pct: rng.gen_range(45.0..100.0_f64).round(),
            tamper: false,
            linkquality: rng.gen_range(60.0..160.0_f64).round(),
            battery_temp_c: ambient_c + if charging { 3.0 } else { 1.0 },
            voltage_v: if charging {
                rng.gen_range(48.0..52.0)
            } else {
                51.5
            },
            current_a: if charging { 4.0 } else { 0.0 },
            charging,
            present: true,
            pressed: false,
            co_ppm: rng.gen_range(0.0..3.0_f64).round(),
            co_flag_ppm: config.rules.carbon_monoxide_for(device).high_ppm,
            power_w: if charging { 180.0 } else { 0.8 },
            plug_temp_c: ambient_c + if charging { 6.0 } else { 1.0 },
            energy_kwh: rng.gen_range(1.0..40.0_f64).round(),
            actuator: actuator.to_owned(),
            cycle: if charging {
                Cycle::Charging
            } else {
                Cycle::Idle(idle_s)
            },
            rng,
        }
    }

    /// A small uniform jitter in `±amp`.
    pub fn jitter(&mut self, amp: f64) -> f64 {
        if amp <= 0.0 {
            0.0
        } else {
            self.rng.gen_range(-amp..amp)
        }
    }

    /// Normal behaviour over `dt`: temperatures wander around their set point, batteries
    /// drain, gas stays at trace levels, e-bike batteries go through charging cycles. Every
    /// drift is far below what any hazard rule reacts to.
    pub fn step_normal(&mut self, dt: Duration) {
        let s = dt.as_secs_f64();
        // Mean-reverting room temperature: at most a few tenths of a degree per minute.
        let pull = (s / 120.0).min(1.0);
        let noise = self.jitter(0.05) * s.sqrt().min(3.0);
        self.temperature_c += (self.ambient_c - self.temperature_c) * pull + noise;
        // A coin cell loses about 1 % a day; show a little of it.
        self.battery_pct = (self.battery_pct - s * 2e-5).max(20.0);
        let gas_noise = self.jitter(0.05);
        self.gas_lel_pct =
            (self.gas_lel_pct + (0.5 - self.gas_lel_pct) * pull + gas_noise).clamp(0.0, 2.0);
        if self.rng.gen_bool((s / 60.0).min(1.0)) {
            self.linkquality = (self.linkquality + self.jitter(8.0))
                .clamp(20.0, 255.0)
                .round();
        }
        if self.kind == DeviceKind::EbikeBattery && self.present {
            self.step_charging(s);
        }
        if self.kind == DeviceKind::SmartPlug {
            self.step_plug(s);
        }
        if self.kind == DeviceKind::CarbonMonoxide {
            let noise = self.jitter(0.5);
            self.co_ppm = (self.co_ppm + (1.0 - self.co_ppm) * pull + noise).clamp(0.0, 5.0);
        }
    }

    /// A smart plug follows the same charging cycle as a battery: ~180 W while charging
    /// (a 48 V charger), under a watt idle, its own temperature a few degrees above the
    /// room's; nothing flows while it is switched off.
    fn step_plug(&mut self, s: f64) {
        if self.present {
            self.step_charging(s);
        }
        let on = self.actuator != "off";
        let load = if on && self.charging {
            180.0 + self.jitter(4.0)
        } else if on {
            0.8
        } else {
            0.0
        };
        self.power_w = load;
        self.energy_kwh += load * s / 3_600_000.0;
        let target = self.ambient_c + if load > 10.0 { 6.0 } else { 1.0 };
        self.plug_temp_c += (target - self.plug_temp_c) * (s / 600.0).min(1.0);
    }

    fn step_charging(&mut self, s: f64) {
        match self.cycle {
            Cycle::Idle(left) => {
                self.current_a = 0.0;
                self.battery_temp_c +=
                    (self.ambient_c + 1.0 - self.battery_temp_c) * (s / 600.0).min(1.0);
                if left <= s {
                    self.cycle = Cycle::Charging;
                    self.charging = true;
                    self.voltage_v = self.rng.gen_range(47.5..50.5);
                } else {
                    self.cycle = Cycle::Idle(left - s);
                }
            }
            Cycle::Charging => {
                // Constant current, then taper; a full charge takes ~10-20 minutes here
                // (hours in real life) so that a demo shows whole cycles.
                let rate = self.rng.gen_range(0.004..0.008);
                self.voltage_v = (self.voltage_v + rate * s).min(FULL_V);
                self.current_a = if self.voltage_v < 53.5 { 4.0 } else { 1.0 };
                // Warms towards ambient + 6 °C with a 10-minute time constant: < 0.6 °C/min.
                let target = self.ambient_c + CHARGING_WARMTH_C;
                self.battery_temp_c += (target - self.battery_temp_c) * (s / 600.0).min(1.0);
                if self.voltage_v >= FULL_V {
                    self.charging = false;
                    self.current_a = 0.0;
                    self.voltage_v = 53.8;
                    let idle = self.rng.gen_range(120.0..600.0);
                    self.cycle = Cycle::Idle(idle);
                }
            }
        }
    }

    /// Puts an e-bike battery on the charger now (scenarios).
    pub fn start_charging(&mut self) {
        self.cycle = Cycle::Charging;
        self.charging = true;
        self.present = true;
        self.current_a = 4.0;
    }

    /// Takes an e-bike battery off the charger now (scenarios).
    pub fn stop_charging(&mut self) {
        self.cycle = Cycle::Idle(f64::INFINITY);
        self.charging = false;
        self.current_a = 0.0;
    }

    /// The state payload in the device's format.
    pub fn payload(&self) -> Vec<u8> {
        let value = match self.format {
            PayloadFormat::Native => self.native(),
            PayloadFormat::Zigbee2mqtt => self.zigbee2mqtt(),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }

    fn native(&self) -> Value {
        let mut m = Map::new();
        m.insert("ts".into(), json!(now_rfc3339()));
        let battery = |m: &mut Map<String, Value>| {
            m.insert("battery_pct".into(), json!(self.battery_pct.round()));
            m.insert("battery_low".into(), json!(self.battery_pct < 15.0));
        };
        match self.kind {
            DeviceKind::Smoke => {
                m.insert("smoke".into(), json!(self.smoke));
                m.insert("temperature_c".into(), json!(round1(self.temperature_c)));
                battery(&mut m);
                m.insert("tamper".into(), json!(self.tamper));
            }
            DeviceKind::Heat => {
                m.insert("temperature_c".into(), json!(round1(self.temperature_c)));
                battery(&mut m);
                m.insert("tamper".into(), json!(self.tamper));
            }
            DeviceKind::WaterLeak => {
                m.insert("water_leak".into(), json!(self.water_leak));
                battery(&mut m);
                m.insert("tamper".into(), json!(self.tamper));
            }
            DeviceKind::Gas => {
                m.insert("gas_lel_pct".into(), json!(round1(self.gas_lel_pct)));
                m.insert("tamper".into(), json!(self.tamper));
            }
            DeviceKind::EbikeBattery => {
                m.insert("present".into(), json!(self.present));
                m.insert("charging".into(), json!(self.charging && self.present));
                if self.present {
                    m.insert("battery_temp_c".into(), json!(round1(self.battery_temp_c)));
                    m.insert("voltage_v".into(), json!(round1(self.voltage_v)));
                    m.insert("current_a".into(), json!(round1(self.current_a)));
                }
            }
            DeviceKind::Sos => {
                m.insert("pressed".into(), json!(self.pressed));
                battery(&mut m);
            }
            DeviceKind::CarbonMonoxide => {
                m.insert("co_ppm".into(), json!(self.co_ppm.round()));
                m.insert("carbon_monoxide".into(), json!(self.co_alarm()));
                battery(&mut m);
            }
            DeviceKind::SmartPlug => {
                m.insert("state".into(), json!(self.actuator));
                m.insert("power_w".into(), json!(round1(self.power_w)));
                m.insert("current_a".into(), json!(self.plug_current_a()));
                m.insert("voltage_v".into(), json!(230.0));
                m.insert("energy_kwh".into(), json!(round3(self.energy_kwh)));
                m.insert("plug_temp_c".into(), json!(round1(self.plug_temp_c)));
            }
            DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker => {
                m.insert("state".into(), json!(self.actuator));
            }
        }
        Value::Object(m)
    }

    /// Zigbee2MQTT field names, as in zigbee-herdsman-converters' `exposes`.
    fn zigbee2mqtt(&self) -> Value {
        let mut m = Map::new();
        let battery = |m: &mut Map<String, Value>| {
            m.insert("battery".into(), json!(self.battery_pct.round()));
            m.insert("battery_low".into(), json!(self.battery_pct < 15.0));
            m.insert(
                "voltage".into(),
                json!((2500.0 + self.battery_pct * 5.0).round()),
            );
        };
        match self.kind {
            DeviceKind::Smoke => {
                m.insert("smoke".into(), json!(self.smoke));
                battery(&mut m);
                m.insert("tamper".into(), json!(self.tamper));
            }
            DeviceKind::Heat => {
                m.insert("temperature".into(), json!(round1(self.temperature_c)));
                battery(&mut m);
                m.insert("tamper".into(), json!(self.tamper));
            }
            DeviceKind::WaterLeak => {
                m.insert("water_leak".into(), json!(self.water_leak));
                battery(&mut m);
                m.insert("tamper".into(), json!(self.tamper));
            }
            DeviceKind::Gas => {
                m.insert(
                    "gas".into(),
                    json!(self.gas_lel_pct >= self.gas_flag_lel_pct),
                );
                m.insert("gas_density".into(), json!(round1(self.gas_lel_pct)));
                m.insert("tamper".into(), json!(self.tamper));
            }
            DeviceKind::EbikeBattery => {
                // No zigbee2mqtt converter describes a charger monitor; send its temperature.
                m.insert("temperature".into(), json!(round1(self.battery_temp_c)));
            }
            DeviceKind::Sos => {
                // IAS emergency buttons expose an `action`; the gateway does not map it yet.
                if self.pressed {
                    m.insert("action".into(), json!("emergency"));
                }
                battery(&mut m);
            }
            DeviceKind::CarbonMonoxide => {
                // As the Moes ZC-HM / Heiman HS1CA-E publish (see the z2m corpus).
                m.insert("carbon_monoxide".into(), json!(self.co_alarm()));
                m.insert("co".into(), json!(self.co_ppm.round()));
                battery(&mut m);
            }
            DeviceKind::SmartPlug => {
                // As a Tuya TS011F / Aqara SP-EUC01 publishes (see the z2m corpus).
                let on = self.actuator != "off";
                m.insert("state".into(), json!(if on { "ON" } else { "OFF" }));
                m.insert("power".into(), json!(round1(self.power_w)));
                m.insert("current".into(), json!(self.plug_current_a()));
                m.insert("voltage".into(), json!(230));
                m.insert("energy".into(), json!(round3(self.energy_kwh)));
                m.insert("device_temperature".into(), json!(round1(self.plug_temp_c)));
            }
            DeviceKind::Valve => {
                let s = if self.actuator == "closed" {
                    "CLOSE"
                } else {
                    "OPEN"
                };
                m.insert("state".into(), json!(s));
            }
            DeviceKind::Siren | DeviceKind::PaSpeaker => {
                let on = matches!(self.actuator.as_str(), "on" | "playing");
                m.insert("state".into(), json!(if on { "ON" } else { "OFF" }));
            }
        }
        m.insert("linkquality".into(), json!(self.linkquality));
        Value::Object(m)
    }

    /// Applies an actuator command; returns whether the state changed. Accepts
    /// `{"state":"close"}`, zigbee2mqtt's `{"state":"CLOSE"}`/`{"state":"ON"}`,
    /// `{"action":"play"}` and the same words as plain text.
    pub fn command(&mut self, payload: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(payload).trim().to_owned();
        let word = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => ["state", "action", "command"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_owned))?,
            Ok(Value::String(s)) => s,
            _ => text,
        }
        .to_ascii_lowercase();
        let next = match (self.kind, word.as_str()) {
            (DeviceKind::Valve, "close" | "closed" | "off" | "close_valve") => "closed",
            (DeviceKind::Valve, "open" | "opened" | "on") => "open",
            (DeviceKind::Siren, "on" | "sound" | "warning" | "sound_siren") => "on",
            (DeviceKind::Siren, "off" | "stop" | "silence") => "off",
            (DeviceKind::PaSpeaker, "play" | "on" | "play_pa" | "announce") => "playing",
            (DeviceKind::PaSpeaker, "stop" | "off" | "idle") => "idle",
            (DeviceKind::SmartPlug, "off" | "switch_off") => "off",
            (DeviceKind::SmartPlug, "on") => "on",
            _ => return None,
        };
        self.actuator = next.to_owned();
        if self.kind == DeviceKind::SmartPlug && next == "off" {
            self.power_w = 0.0;
        }
        Some(next.to_owned())
    }

    /// A CO alarm's own flag: set at the immediate alarm point.
    pub fn co_alarm(&self) -> bool {
        self.co_ppm >= self.co_flag_ppm
    }

    /// A plug's current from its load at 230 V, two decimals.
    pub fn plug_current_a(&self) -> f64 {
        (self.power_w / 230.0 * 100.0).round() / 100.0
    }
}

/// The current time as native payloads carry it (RFC 3339, milliseconds, +08:00 like the
/// sensors in a Chinese compound).
pub fn now_rfc3339() -> String {
    let offset = chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset");
    chrono::Utc::now()
        .with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// One decimal, as sensors report.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Three decimals (energy meters, kWh).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        edge_config::parse(
            r#"
[site]
id = "t"
name = "T"
kind = "compound"
[[locations.buildings]]
id = "b1"
name = "B1"
floors = 6
[[devices]]
id = "heat-1"
kind = "heat"
location = { building = "b1" }
[[devices]]
id = "gas-z"
kind = "gas"
format = "zigbee2mqtt"
location = { building = "b1" }
[[devices]]
id = "valve-1"
kind = "valve"
location = { building = "b1" }
[[devices]]
id = "bike-1"
kind = "ebike_battery"
location = { building = "b1" }
"#,
            "t.toml",
            std::path::Path::new("."),
        )
        .expect("valid test config")
    }

    fn device(config: &Config, id: &str, seed: u64) -> SimDevice {
        SimDevice::new(config, config.device(id).unwrap(), seed)
    }

    fn temperatures(mut d: SimDevice, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                d.step_normal(Duration::from_secs(10));
                round1(d.temperature_c)
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_readings_and_another_seed_does_not() {
        let c = config();
        let a = temperatures(device(&c, "heat-1", 7), 50);
        let b = temperatures(device(&c, "heat-1", 7), 50);
        let other = temperatures(device(&c, "heat-1", 8), 50);
        assert_eq!(a, b);
        assert_ne!(a, other);
    }

    #[test]
    fn normal_room_temperature_never_drifts_like_a_fire() {
        let c = config();
        let mut d = device(&c, "heat-1", 1);
        let mut prev = d.temperature_c;
        for _ in 0..8640 {
            d.step_normal(Duration::from_secs(10));
            // The heat rule's default rate of rise is 8 °C/min: stay far below it.
            assert!(
                (d.temperature_c - prev).abs() < 0.5,
                "{prev} -> {}",
                d.temperature_c
            );
            assert!((15.0..35.0).contains(&d.temperature_c));
            prev = d.temperature_c;
        }
        assert!(d.battery_pct >= 20.0);
    }

    #[test]
    fn an_ebike_battery_goes_through_whole_charging_cycles_without_overheating() {
        let c = config();
        let mut d = device(&c, "bike-1", 3);
        let (mut plugged, mut unplugged) = (0, 0);
        let mut was = d.charging;
        let mut prev = d.battery_temp_c;
        for _ in 0..(6 * 3600) {
            d.step_normal(Duration::from_secs(1));
            if d.charging != was {
                if d.charging {
                    plugged += 1
                } else {
                    unplugged += 1
                }
                was = d.charging;
            }
            // The rise rule's default is 1 °C/min.
            assert!((d.battery_temp_c - prev) * 60.0 < 0.7);
            assert!(d.battery_temp_c < 40.0);
            prev = d.battery_temp_c;
        }
        assert!(
            plugged >= 2 && unplugged >= 2,
            "{plugged} plugs, {unplugged} unplugs"
        );
    }

    #[test]
    fn payloads_use_the_field_names_of_each_format() {
        let c = config();
        let heat: Value = serde_json::from_slice(&device(&c, "heat-1", 1).payload()).unwrap();
        assert!(heat["temperature_c"].is_f64() && heat["ts"].is_string());
        let mut gas = device(&c, "gas-z", 1);
        gas.gas_lel_pct = 30.0;
        let z: Value = serde_json::from_slice(&gas.payload()).unwrap();
        assert_eq!(z["gas"], true, "above the configured high stage: {z}");
        assert_eq!(z["gas_density"], 30.0);
        assert!(z.get("ts").is_none());
    }

    #[test]
    fn a_valve_closes_on_a_native_or_zigbee2mqtt_command_and_ignores_nonsense() {
        let c = config();
        let mut v = device(&c, "valve-1", 1);
        assert_eq!(v.actuator, "open");
        assert_eq!(
            v.command(br#"{"state":"CLOSE"}"#).as_deref(),
            Some("closed")
        );
        assert_eq!(v.command(b"open").as_deref(), Some("open"));
        assert_eq!(
            v.command(br#"{"action":"close_valve"}"#).as_deref(),
            Some("closed")
        );
        assert_eq!(v.command(br#"{"state":"explode"}"#), None);
        assert_eq!(v.actuator, "closed");
        let state: Value = serde_json::from_slice(&v.payload()).unwrap();
        assert_eq!(state["state"], "closed");
    }
}
