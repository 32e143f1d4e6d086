//! `[[devices]]`: MQTT sensors and actuators.

use super::{redact, Level, LocationRef, TimeWindow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// `[[devices]]`: one sensor or actuator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Unique id: lowercase ASCII letters, digits, `-`, `_`
    /// (e.g. `"b1-u1-1201-smoke"`).
    pub id: String,
    /// What the device is.
    pub kind: DeviceKind,
    /// Human name shown on the console, e.g. `"1201 厨房燃气"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it is (see [`LocationRef`]).
    pub location: LocationRef,
    /// Payload format: `native` (default) or `zigbee2mqtt`.
    #[serde(default)]
    pub format: PayloadFormat,
    /// zigbee2mqtt only: the device's friendly name. Default: the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friendly_name: Option<String>,
    /// State topic override. Default: see [`Device::state_topic`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Expected heartbeat period in seconds (10..=86400). Default: 300 for
    /// sensors, 60 for actuators (see [`Device::heartbeat_s`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_s: Option<u32>,
    /// Embedded-broker user name (required with `broker.require_auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Embedded-broker password (shown as `********` when serialized).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub password: Option<String>,
    /// Per-device overrides of this kind's rule (`[rules.<kind>]`); only
    /// that rule's keys are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    /// zigbee2mqtt only: the device's Zigbee2MQTT model (as `zigbee2mqtt/bridge/devices`
    /// lists it, e.g. `"TS0601_gas_sensor_2"`). Selects the built-in device profile where
    /// a model's payload needs one (see [`crate::profiles`]); any other model is read the
    /// generic way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Which payload key carries which reading, for a model the gateway does not know:
    /// `fields = { gas_lel_pct = "gas_value" }`. Applied over the model's profile and the
    /// generic decoding; each reading must fit the device kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<Field, String>,
    /// ebike_battery only: the id of the `smart_plug` its charger is plugged into, so a
    /// `switch_off` linkage with `own_plug = true` cuts that plug on a battery alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plug: Option<String>,
    /// Cameras (`[[cameras]]` ids) that see this device, e.g. `["shed-cam"]`: a smoke, heat,
    /// gas, SOS or e-bike battery alarm of it gets a snapshot and a short clip from each
    /// (联动抓拍), attached to the alert. Default: its area's `cameras`, else its
    /// building's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cameras: Vec<String>,
}

impl Device {
    /// The effective state topic: `topic` if given, else
    /// `sensors/{id}/state` (native) or `zigbee2mqtt/{friendly_name}`
    /// (zigbee2mqtt, friendly name defaulting to the id).
    pub fn state_topic(&self) -> String {
        if let Some(topic) = &self.topic {
            return topic.clone();
        }
        match self.format {
            PayloadFormat::Native => format!("sensors/{}/state", self.id),
            PayloadFormat::Zigbee2mqtt => format!("zigbee2mqtt/{}", self.friendly_name()),
        }
    }

    /// The topic commands are published to (actuators): the state topic
    /// with a final `/state` replaced by `/set`, or with `/set` appended
    /// (zigbee2mqtt convention).
    pub fn command_topic(&self) -> String {
        let state = self.state_topic();
        match state.strip_suffix("/state") {
            Some(base) => format!("{base}/set"),
            None => format!("{state}/set"),
        }
    }

    /// The zigbee2mqtt friendly name (`friendly_name`, default the id).
    pub fn friendly_name(&self) -> &str {
        self.friendly_name.as_deref().unwrap_or(&self.id)
    }

    /// The effective heartbeat period in seconds.
    pub fn heartbeat_s(&self) -> u32 {
        self.heartbeat_s
            .unwrap_or_else(|| self.kind.default_heartbeat_s())
    }

    /// Which payload key carries which reading beyond the generic decoding: the model's
    /// profile, then the device's own `fields` over it. Sorted by reading.
    pub fn field_map(&self) -> Vec<(Field, String)> {
        let mut map: BTreeMap<Field, String> = BTreeMap::new();
        let profile = self.model.as_deref().and_then(crate::profiles::profile);
        for (field, key) in profile.map(|p| p.fields).unwrap_or_default() {
            if field.applies_to(self.kind) {
                map.insert(*field, (*key).to_owned());
            }
        }
        map.extend(self.fields.iter().map(|(f, k)| (*f, k.clone())));
        map.into_iter().collect()
    }

    /// Payload keys the generic decoding must not read: the model profile's `ignore`, less
    /// any key the device's own `fields` maps.
    pub fn ignored_keys(&self) -> Vec<&'static str> {
        let profile = self.model.as_deref().and_then(crate::profiles::profile);
        profile
            .map(|p| p.ignore)
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|k| !self.fields.values().any(|v| v == k))
            .collect()
    }
}

/// A reading a payload key can be mapped to (`fields = { <reading> = "<key>" }`): the
/// gateway's own names, units in the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// Smoke alarm flag (boolean).
    Smoke,
    /// Temperature, °C.
    TemperatureC,
    /// A heat detector's own alarm flag (boolean).
    Heat,
    /// Combustible gas concentration, % LEL.
    GasLelPct,
    /// Gas alarm flag (boolean).
    Gas,
    /// Carbon monoxide alarm flag (boolean).
    CarbonMonoxide,
    /// Carbon monoxide concentration, ppm.
    CoPpm,
    /// Water leak flag (boolean).
    WaterLeak,
    /// Battery charge, %.
    BatteryPct,
    /// Battery low flag (boolean).
    BatteryLow,
    /// Tamper flag (boolean).
    Tamper,
    /// E-bike battery temperature, °C.
    BatteryTempC,
    /// Voltage, V.
    VoltageV,
    /// Current, A.
    CurrentA,
    /// Power, W.
    PowerW,
    /// Energy, kWh.
    EnergyKwh,
    /// A smart plug's own temperature, °C.
    PlugTempC,
    /// Charging flag (boolean).
    Charging,
    /// Battery present flag (boolean).
    Present,
    /// SOS pressed flag (boolean).
    Pressed,
    /// Actuator / plug state (text: `ON`, `OFF`, `closed`…).
    State,
}

/// The JSON type a [`Field`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A JSON boolean.
    Flag,
    /// A JSON number.
    Number,
    /// A JSON string.
    Text,
}

impl Field {
    /// All readings, in declaration order.
    pub const ALL: [Field; 21] = [
        Field::Smoke,
        Field::TemperatureC,
        Field::Heat,
        Field::GasLelPct,
        Field::Gas,
        Field::CarbonMonoxide,
        Field::CoPpm,
        Field::WaterLeak,
        Field::BatteryPct,
        Field::BatteryLow,
        Field::Tamper,
        Field::BatteryTempC,
        Field::VoltageV,
        Field::CurrentA,
        Field::PowerW,
        Field::EnergyKwh,
        Field::PlugTempC,
        Field::Charging,
        Field::Present,
        Field::Pressed,
        Field::State,
    ];

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Smoke => "smoke",
            Field::TemperatureC => "temperature_c",
            Field::Heat => "heat",
            Field::GasLelPct => "gas_lel_pct",
            Field::Gas => "gas",
            Field::CarbonMonoxide => "carbon_monoxide",
            Field::CoPpm => "co_ppm",
            Field::WaterLeak => "water_leak",
            Field::BatteryPct => "battery_pct",
            Field::BatteryLow => "battery_low",
            Field::Tamper => "tamper",
            Field::BatteryTempC => "battery_temp_c",
            Field::VoltageV => "voltage_v",
            Field::CurrentA => "current_a",
            Field::PowerW => "power_w",
            Field::EnergyKwh => "energy_kwh",
            Field::PlugTempC => "plug_temp_c",
            Field::Charging => "charging",
            Field::Present => "present",
            Field::Pressed => "pressed",
            Field::State => "state",
        }
    }

    /// The JSON type the payload key must have.
    pub fn value_type(self) -> FieldType {
        match self {
            Field::TemperatureC
            | Field::GasLelPct
            | Field::CoPpm
            | Field::BatteryPct
            | Field::BatteryTempC
            | Field::VoltageV
            | Field::CurrentA
            | Field::PowerW
            | Field::EnergyKwh
            | Field::PlugTempC => FieldType::Number,
            Field::State => FieldType::Text,
            _ => FieldType::Flag,
        }
    }

    /// Whether a device of `kind` uses this reading (battery, tamper and state apply to
    /// every kind).
    pub fn applies_to(self, kind: DeviceKind) -> bool {
        use DeviceKind as K;
        match self {
            Field::BatteryPct | Field::BatteryLow | Field::Tamper | Field::State => true,
            Field::Smoke => kind == K::Smoke,
            Field::TemperatureC => matches!(kind, K::Heat | K::Smoke),
            Field::Heat => kind == K::Heat,
            Field::GasLelPct | Field::Gas => kind == K::Gas,
            Field::CarbonMonoxide | Field::CoPpm => kind == K::CarbonMonoxide,
            Field::WaterLeak => kind == K::WaterLeak,
            Field::BatteryTempC | Field::Charging | Field::Present => kind == K::EbikeBattery,
            Field::VoltageV | Field::CurrentA => {
                matches!(kind, K::EbikeBattery | K::SmartPlug)
            }
            Field::PowerW | Field::EnergyKwh | Field::PlugTempC => kind == K::SmartPlug,
            Field::Pressed => kind == K::Sos,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a device. Sensors raise alerts; actuators are driven by
/// `[[rules.linkage]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// Smoke detector (烟感).
    Smoke,
    /// Heat detector (温感).
    Heat,
    /// Water leak sensor (水浸).
    WaterLeak,
    /// Combustible gas detector, % LEL (燃气).
    Gas,
    /// Carbon monoxide alarm, ppm (一氧化碳).
    CarbonMonoxide,
    /// E-bike battery / charger monitor (电动车电池).
    EbikeBattery,
    /// SOS / panic button (紧急呼叫).
    Sos,
    /// Smart plug / charging socket in the charging shed (智能充电插座): reports power,
    /// current, voltage, energy and its temperature, and can be switched off by linkage.
    SmartPlug,
    /// Actuator: siren / sounder (声光报警器).
    Siren,
    /// Actuator: gas shut-off valve (燃气切断阀).
    Valve,
    /// Actuator: public-address speaker (广播).
    PaSpeaker,
}

impl DeviceKind {
    /// All kinds, in declaration order.
    pub const ALL: [DeviceKind; 11] = [
        DeviceKind::Smoke,
        DeviceKind::Heat,
        DeviceKind::WaterLeak,
        DeviceKind::Gas,
        DeviceKind::CarbonMonoxide,
        DeviceKind::EbikeBattery,
        DeviceKind::Sos,
        DeviceKind::SmartPlug,
        DeviceKind::Siren,
        DeviceKind::Valve,
        DeviceKind::PaSpeaker,
    ];

    /// Siren, valve and PA speaker.
    pub fn is_actuator(self) -> bool {
        matches!(
            self,
            DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker
        )
    }

    /// Everything that is not an actuator (a smart plug is both: it measures, and
    /// linkage switches it).
    pub fn is_sensor(self) -> bool {
        !self.is_actuator()
    }

    /// Devices linkage sends commands to, whose state reports confirm them: actuators and
    /// smart plugs.
    pub fn takes_commands(self) -> bool {
        self.is_actuator() || self == DeviceKind::SmartPlug
    }

    /// 300 s for sensors, 60 s for actuators.
    pub fn default_heartbeat_s(self) -> u32 {
        if self.is_actuator() {
            60
        } else {
            300
        }
    }

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Smoke => "smoke",
            DeviceKind::Heat => "heat",
            DeviceKind::WaterLeak => "water_leak",
            DeviceKind::Gas => "gas",
            DeviceKind::CarbonMonoxide => "carbon_monoxide",
            DeviceKind::EbikeBattery => "ebike_battery",
            DeviceKind::Sos => "sos",
            DeviceKind::SmartPlug => "smart_plug",
            DeviceKind::Siren => "siren",
            DeviceKind::Valve => "valve",
            DeviceKind::PaSpeaker => "pa_speaker",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a device's MQTT payloads are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// shouwang's own JSON payloads on `sensors/{id}/state`.
    #[default]
    Native,
    /// zigbee2mqtt JSON on `zigbee2mqtt/{friendly_name}`.
    Zigbee2mqtt,
}

/// `thresholds = { … }` on a device: overrides of its kind's rule. Every key
/// is optional; only the keys of the device kind's `[rules.<kind>]` table
/// are accepted (e.g. a gas device takes `low_lel_pct`, `high_lel_pct`,
/// `hysteresis_lel_pct`, `low_level`, `high_level`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Smoke, heat, water_leak, sos, ebike_battery (warning level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Gas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_level: Option<Level>,
    /// Gas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_level: Option<Level>,
    /// Gas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_lel_pct: Option<f64>,
    /// Gas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_lel_pct: Option<f64>,
    /// Gas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hysteresis_lel_pct: Option<f64>,
    /// Heat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_c: Option<f64>,
    /// Heat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_c_per_min: Option<f64>,
    /// Heat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_window_s: Option<u32>,
    /// Heat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hysteresis_c: Option<f64>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temp_c: Option<f64>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise_c_per_min: Option<f64>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise_window_s: Option<u32>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runaway_c_per_s: Option<f64>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voltage_drop_pct: Option<f64>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_charging_h: Option<f64>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theft_window: Option<TimeWindow>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runaway_level: Option<Level>,
    /// E-bike battery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theft_level: Option<Level>,
    /// Water leak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalate_within_min: Option<u32>,
    /// Water leak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalate_level: Option<Level>,
    /// Carbon monoxide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn_ppm: Option<f64>,
    /// Carbon monoxide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_ppm: Option<f64>,
    /// Carbon monoxide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid_ppm: Option<f64>,
    /// Carbon monoxide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_ppm: Option<f64>,
    /// Carbon monoxide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn_level: Option<Level>,
    /// Smart plug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charging_min_w: Option<f64>,
    /// Smart plug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_current_a: Option<f64>,
    /// Smart plug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_power_w: Option<f64>,
    /// Smart plug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_temp_c: Option<f64>,
    /// Smart plug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub danger_level: Option<Level>,
}

impl Thresholds {
    /// The names of the keys that are set, in declaration order.
    pub fn keys_set(&self) -> Vec<&'static str> {
        let t = self;
        let set: [(&'static str, bool); 31] = [
            ("level", t.level.is_some()),
            ("low_level", t.low_level.is_some()),
            ("high_level", t.high_level.is_some()),
            ("low_lel_pct", t.low_lel_pct.is_some()),
            ("high_lel_pct", t.high_lel_pct.is_some()),
            ("hysteresis_lel_pct", t.hysteresis_lel_pct.is_some()),
            ("fixed_c", t.fixed_c.is_some()),
            ("rate_c_per_min", t.rate_c_per_min.is_some()),
            ("rate_window_s", t.rate_window_s.is_some()),
            ("hysteresis_c", t.hysteresis_c.is_some()),
            ("temp_c", t.temp_c.is_some()),
            ("rise_c_per_min", t.rise_c_per_min.is_some()),
            ("rise_window_s", t.rise_window_s.is_some()),
            ("runaway_c_per_s", t.runaway_c_per_s.is_some()),
            ("voltage_drop_pct", t.voltage_drop_pct.is_some()),
            ("max_charging_h", t.max_charging_h.is_some()),
            ("theft_window", t.theft_window.is_some()),
            ("runaway_level", t.runaway_level.is_some()),
            ("theft_level", t.theft_level.is_some()),
            ("escalate_within_min", t.escalate_within_min.is_some()),
            ("escalate_level", t.escalate_level.is_some()),
            ("warn_ppm", t.warn_ppm.is_some()),
            ("low_ppm", t.low_ppm.is_some()),
            ("mid_ppm", t.mid_ppm.is_some()),
            ("high_ppm", t.high_ppm.is_some()),
            ("warn_level", t.warn_level.is_some()),
            ("charging_min_w", t.charging_min_w.is_some()),
            ("max_current_a", t.max_current_a.is_some()),
            ("max_power_w", t.max_power_w.is_some()),
            ("max_temp_c", t.max_temp_c.is_some()),
            ("danger_level", t.danger_level.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
    }

    /// The keys a device of `kind` accepts (empty for actuators).
    pub fn keys_for(kind: DeviceKind) -> &'static [&'static str] {
        match kind {
            DeviceKind::Smoke | DeviceKind::Sos => &["level"],
            DeviceKind::Gas => &[
                "low_lel_pct",
                "high_lel_pct",
                "hysteresis_lel_pct",
                "low_level",
                "high_level",
            ],
            DeviceKind::Heat => &[
                "fixed_c",
                "rate_c_per_min",
                "rate_window_s",
                "hysteresis_c",
                "level",
            ],
            DeviceKind::EbikeBattery => &[
                "temp_c",
                "rise_c_per_min",
                "rise_window_s",
                "runaway_c_per_s",
                "voltage_drop_pct",
                "max_charging_h",
                "theft_window",
                "level",
                "runaway_level",
                "theft_level",
            ],
            DeviceKind::WaterLeak => &["escalate_within_min", "level", "escalate_level"],
            DeviceKind::CarbonMonoxide => &[
                "warn_ppm",
                "low_ppm",
                "mid_ppm",
                "high_ppm",
                "warn_level",
                "level",
            ],
            DeviceKind::SmartPlug => &[
                "charging_min_w",
                "max_current_a",
                "max_power_w",
                "max_temp_c",
                "rise_c_per_min",
                "rise_window_s",
                "max_charging_h",
                "level",
                "danger_level",
            ],
            DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker => &[],
        }
    }
}
