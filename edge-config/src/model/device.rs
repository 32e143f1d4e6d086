//! `[[devices]]`: MQTT sensors and actuators.

use super::{redact, Level, LocationRef, TimeWindow};
use serde::{Deserialize, Serialize};
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
    /// E-bike battery / charger monitor (电动车电池).
    EbikeBattery,
    /// SOS / panic button (紧急呼叫).
    Sos,
    /// Actuator: siren / sounder (声光报警器).
    Siren,
    /// Actuator: gas shut-off valve (燃气切断阀).
    Valve,
    /// Actuator: public-address speaker (广播).
    PaSpeaker,
}

impl DeviceKind {
    /// All kinds, in declaration order.
    pub const ALL: [DeviceKind; 9] = [
        DeviceKind::Smoke,
        DeviceKind::Heat,
        DeviceKind::WaterLeak,
        DeviceKind::Gas,
        DeviceKind::EbikeBattery,
        DeviceKind::Sos,
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

    /// Everything that is not an actuator.
    pub fn is_sensor(self) -> bool {
        !self.is_actuator()
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
            DeviceKind::EbikeBattery => "ebike_battery",
            DeviceKind::Sos => "sos",
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
}

impl Thresholds {
    /// The names of the keys that are set, in declaration order.
    pub fn keys_set(&self) -> Vec<&'static str> {
        let t = self;
        let set: [(&'static str, bool); 21] = [
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
            DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker => &[],
        }
    }
}
