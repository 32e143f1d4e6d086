//! Payload decoding: topic → device, bytes → [`Values`], both payload formats.
//!
//! Pure functions, no I/O: the ingest task calls [`Router::route`] then [`decode`] for every
//! MQTT publish, and counts whatever they reject.

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset};
use edge_config::{Config, DeviceKind, PayloadFormat};
use serde::{Deserialize, Serialize};

pub use crate::reading::{Decoded, Values};

/// Payloads larger than this are rejected before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Why a message was not accepted. Counted per reason and per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    #[error("payload larger than 16 KiB")]
    Oversized,
    #[error("payload is not valid JSON")]
    InvalidJson,
    #[error("payload is not a JSON object")]
    NotAnObject,
    #[error("a field has the wrong type")]
    WrongType,
    #[error("topic belongs to no configured device")]
    UnknownDevice,
    #[error("device exceeded its message rate")]
    Throttled,
    /// The embedded broker dropped the oldest messages of this device's topic because they
    /// came faster than ingest read them (its per-topic log overran; only a flood does that).
    #[error("the broker dropped messages that came faster than ingest could read them")]
    BrokerOverrun,
}

impl Reject {
    /// All reasons, for reports.
    pub const ALL: [Reject; 7] = [
        Reject::Oversized,
        Reject::InvalidJson,
        Reject::NotAnObject,
        Reject::WrongType,
        Reject::UnknownDevice,
        Reject::Throttled,
        Reject::BrokerOverrun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Oversized => "oversized",
            Reject::InvalidJson => "invalid_json",
            Reject::NotAnObject => "not_an_object",
            Reject::WrongType => "wrong_type",
            Reject::UnknownDevice => "unknown_device",
            Reject::Throttled => "throttled",
            Reject::BrokerOverrun => "broker_overrun",
        }
    }
}

/// What a topic means for its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The device's state/readings topic.
    State,
    /// `sensors/{id}/heartbeat` (native): alive, no readings.
    Heartbeat,
    /// `zigbee2mqtt/{name}/availability`: `online` / `offline`.
    Availability,
}

/// Maps topics to devices, built once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Exact topic → (device index in `Config::devices`, role).
    topics: HashMap<String, (usize, Role)>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let mut topics = HashMap::new();
        for (i, d) in config.devices.iter().enumerate() {
            topics.insert(d.state_topic(), (i, Role::State));
            let extra = match d.format {
                PayloadFormat::Native => (format!("sensors/{}/heartbeat", d.id), Role::Heartbeat),
                PayloadFormat::Zigbee2mqtt => (
                    format!("zigbee2mqtt/{}/availability", d.friendly_name()),
                    Role::Availability,
                ),
            };
            topics.entry(extra.0).or_insert((i, extra.1));
        }
        Router { topics }
    }

    /// The device and role of a topic, if any device owns it.
    pub fn route(&self, topic: &str) -> Option<(usize, Role)> {
        self.topics.get(topic).copied()
    }

    /// Topic filters an MQTT client subscribes to (external broker): the standard topic
    /// families with wildcards (`sensors/+/state`, `sensors/+/heartbeat`, `zigbee2mqtt/#`)
    /// plus every custom device topic outside them. Wildcards keep the broker's subscription
    /// table small on a site with thousands of devices, and let the gateway see — and count —
    /// publishes on topics no device owns.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut filters: Vec<String> = WILDCARDS.iter().map(|f| f.to_string()).collect();
        let mut custom: Vec<String> = self
            .topics
            .keys()
            .filter(|t| !covered_by_wildcards(t))
            .cloned()
            .collect();
        custom.sort();
        filters.extend(custom);
        filters
    }

    /// The embedded broker's in-process device link subscribes these, so every device has
    /// broker logs of its own and a flooding device cannot push another device's alarm out
    /// of a shared log. Sorted. A native device with the standard topics gets one filter,
    /// `sensors/{id}/+` (a zigbee2mqtt one `zigbee2mqtt/{name}/#`), so all its topics share
    /// one small log: with a log per topic, a quiet topic's messages (heartbeats,
    /// availability) would stay for tens of minutes, each keeping the broker's network read
    /// buffer it was parsed from (see `broker`, "Memory").
    /// Any other device, or one whose `sensors/{id}/+` would also match another device's
    /// topic, gets its topics exactly. Other topics under a device's filter (actuator
    /// commands on `sensors/{id}/set`) reach the device link too, which skips them.
    pub fn device_filters(&self) -> Vec<String> {
        let mut by_device: HashMap<usize, Vec<&str>> = HashMap::new();
        for (topic, (device, _)) in &self.topics {
            by_device.entry(*device).or_default().push(topic);
        }
        let mut filters: Vec<String> = Vec::new();
        for (device, topics) in by_device {
            match self
                .native_family(device, &topics)
                .or_else(|| self.zigbee_family(device, &topics))
            {
                Some(family) => filters.push(family),
                None => filters.extend(topics.iter().map(|t| t.to_string())),
            }
        }
        filters.sort();
        filters
    }

    /// `sensors/{id}/+` when `topics` are exactly `sensors/{id}/state` and `…/heartbeat` and
    /// no other device owns a topic that filter matches.
    fn native_family(&self, device: usize, topics: &[&str]) -> Option<String> {
        let [a, b] = topics else {
            return None;
        };
        let id = [a, b].iter().find_map(|t| {
            let id = t.strip_prefix("sensors/")?.strip_suffix("/state")?;
            (!id.is_empty() && !id.contains(['/', '+', '#'])).then_some(id)
        })?;
        let (state, heartbeat) = (
            format!("sensors/{id}/state"),
            format!("sensors/{id}/heartbeat"),
        );
        let standard = [a, b].iter().all(|t| **t == state || **t == heartbeat) && a != b;
        let prefix = format!("sensors/{id}/");
        let alone = self.topics.iter().all(|(t, (d, _))| {
            *d == device
                || t.strip_prefix(&prefix)
                    .is_none_or(|rest| rest.contains('/'))
        });
        (standard && alone).then(|| format!("sensors/{id}/+"))
    }

    /// `zigbee2mqtt/{name}/#` when `topics` are exactly `zigbee2mqtt/{name}` and
    /// `…/availability` and no other device owns a topic that filter matches. Without it the
    /// availability topic had a log of its own that only its rare messages rotate: a
    /// device republishing `online` every few seconds kept ~40 of them, each holding the
    /// broker's read buffer it was parsed from (see `broker`, "Memory").
    fn zigbee_family(&self, device: usize, topics: &[&str]) -> Option<String> {
        let [a, b] = topics else {
            return None;
        };
        let (state, availability) = if a.ends_with("/availability") {
            (b, a)
        } else {
            (a, b)
        };
        let name = state.strip_prefix("zigbee2mqtt/")?;
        let plain = !name.is_empty() && !name.contains(['/', '+', '#']);
        let standard = *availability == format!("{state}/availability");
        let prefix = format!("{state}/");
        let alone = self
            .topics
            .iter()
            .all(|(t, (d, _))| *d == device || (t != state && !t.starts_with(&prefix)));
        (plain && standard && alone).then(|| format!("{state}/#"))
    }

    /// What the embedded broker's in-process *watch* link subscribes to (everything), so
    /// publishes on topics no device owns are still seen and counted. Its log is shared, so
    /// under a flood these counts are lower bounds; device topics never depend on it.
    pub fn watch_filters(&self) -> Vec<String> {
        WATCH_WILDCARDS.iter().map(|f| f.to_string()).collect()
    }

    /// Whether a topic no device owns is in a sensor family and so counted as
    /// `unknown_device` (other traffic on the broker is none of ingest's business).
    pub fn counts_as_sensor_traffic(&self, topic: &str) -> bool {
        topic.starts_with("sensors/") || topic.starts_with("zigbee2mqtt/")
    }

    /// Topics that arrive through the wildcards but are not sensor traffic: the zigbee2mqtt
    /// bridge's own topics and command topics (ours included). Skipped without counting.
    pub fn is_ignorable(&self, topic: &str) -> bool {
        self.route(topic).is_none()
            && (topic.starts_with("zigbee2mqtt/bridge/")
                || topic.ends_with("/set")
                || topic.ends_with("/get"))
    }
}

/// The standard topic families, subscribed with wildcards.
const WILDCARDS: [&str; 3] = ["sensors/+/state", "sensors/+/heartbeat", "zigbee2mqtt/#"];

/// The watch link subscribes to everything. It counts only the sensor families
/// (`sensors/…`, `zigbee2mqtt/…`, see [`Router::counts_as_sensor_traffic`]), but rumqttd
/// caches which filters a topic matches only when at least one does: without a catch-all,
/// every publish on a topic nobody subscribed (a smart plug's telemetry, say) would be
/// matched against every device filter again, slowing the broker for everyone.
const WATCH_WILDCARDS: [&str; 1] = ["#"];

fn covered_by_wildcards(topic: &str) -> bool {
    let parts: Vec<&str> = topic.split('/').collect();
    matches!(parts.as_slice(), ["sensors", _, "state" | "heartbeat"])
        || parts.first() == Some(&"zigbee2mqtt")
}

/// shouwang's native JSON: `Values` plus an optional `ts`. Unknown keys are ignored so
/// newer sensors can add fields; known keys must have the right type.
#[derive(Deserialize)]
struct Native {
    #[serde(default)]
    ts: Option<DateTime<FixedOffset>>,
    #[serde(flatten)]
    values: Values,
}

/// Zigbee2MQTT's field names (see zigbee-herdsman-converters' `exposes`).
#[derive(Deserialize)]
struct Z2m {
    smoke: Option<bool>,
    gas: Option<bool>,
    /// Some gas detectors report a density in % LEL.
    gas_density: Option<f64>,
    water_leak: Option<bool>,
    tamper: Option<bool>,
    battery_low: Option<bool>,
    battery: Option<f64>,
    temperature: Option<f64>,
    linkquality: Option<f64>,
    /// Valves and sirens report `state` ("ON"/"OFF", "OPEN"/"CLOSE").
    state: Option<String>,
    /// Buttons report what was done (`emergency`, `sos`, `single`, …).
    action: Option<String>,
}

impl From<Z2m> for Values {
    fn from(z: Z2m) -> Values {
        Values {
            smoke: z.smoke,
            gas: z.gas,
            gas_lel_pct: z.gas_density,
            water_leak: z.water_leak,
            tamper: z.tamper,
            battery_low: z.battery_low,
            battery_pct: z.battery,
            temperature_c: z.temperature,
            linkquality: z.linkquality,
            state: z.state.map(|s| s.to_ascii_lowercase()),
            ..Values::default()
        }
    }
}

/// Decodes one payload for a device of `kind` in `format`, arriving on a topic of `role`.
pub fn decode(
    payload: &[u8],
    format: PayloadFormat,
    role: Role,
    kind: DeviceKind,
) -> Result<Decoded, Reject> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(Reject::Oversized);
    }
    match role {
        Role::Heartbeat => Ok(Decoded {
            values: Values::default(),
            sensor_ts: None,
            online: Some(true),
        }),
        Role::Availability => decode_availability(payload),
        Role::State => decode_state(payload, format, kind),
    }
}

fn decode_state(
    payload: &[u8],
    format: PayloadFormat,
    kind: DeviceKind,
) -> Result<Decoded, Reject> {
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| Reject::InvalidJson)?;
    if !json.is_object() {
        return Err(Reject::NotAnObject);
    }
    let (values, sensor_ts) = match format {
        PayloadFormat::Native => {
            let n: Native = serde_json::from_value(json).map_err(|_| Reject::WrongType)?;
            (n.values, n.ts)
        }
        PayloadFormat::Zigbee2mqtt => {
            let z: Z2m = serde_json::from_value(json).map_err(|_| Reject::WrongType)?;
            let pressed = sos_pressed(kind, z.action.as_deref());
            let mut values = Values::from(z);
            values.pressed = values.pressed.or(pressed);
            (values, None)
        }
    };
    if !values_are_finite(&values) {
        return Err(Reject::WrongType);
    }
    Ok(Decoded {
        values,
        sensor_ts,
        online: Some(true),
    })
}

/// A zigbee2mqtt SOS/emergency button's `action`: any press counts (`emergency`, `sos`,
/// `single`, `double`, `hold`…), a release or an empty action does not.
fn sos_pressed(kind: DeviceKind, action: Option<&str>) -> Option<bool> {
    let action = action?.trim();
    (kind == DeviceKind::Sos && !action.is_empty() && !action.contains("release")).then_some(true)
}

/// `online` / `offline`, or `{"state":"online"}`.
fn decode_availability(payload: &[u8]) -> Result<Decoded, Reject> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Reject::InvalidJson)?
        .trim();
    let state = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map
            .get("state")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or(Reject::WrongType)?,
        Ok(serde_json::Value::String(s)) => s,
        _ => text.to_owned(),
    };
    let online = match state.as_str() {
        "online" => true,
        "offline" => false,
        _ => return Err(Reject::WrongType),
    };
    Ok(Decoded {
        values: Values::default(),
        sensor_ts: None,
        online: Some(online),
    })
}

fn values_are_finite(v: &Values) -> bool {
    [
        v.temperature_c,
        v.gas_lel_pct,
        v.battery_pct,
        v.battery_temp_c,
        v.voltage_v,
        v.current_a,
        v.linkquality,
    ]
    .into_iter()
    .flatten()
    .all(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_native_device_gets_one_broker_filter_unless_it_would_cover_another_devices_topic() {
        let config = edge_config::parse(
            "[site]\nid='s'\nname='s'\nkind='compound'\n[[locations.buildings]]\nid='b'\nname='b'\nfloors=2\n\
             [[devices]]\nid='a'\nkind='smoke'\nlocation={building='b'}\n\
             [[devices]]\nid='c'\nkind='gas'\ntopic='legacy/kitchen/gas'\nlocation={building='b'}\n\
             [[devices]]\nid='d'\nkind='heat'\nlocation={building='b'}\n\
             [[devices]]\nid='e'\nkind='gas'\ntopic='sensors/d/gas'\nlocation={building='b'}\n\
             [[devices]]\nid='k'\nkind='heat'\nformat='zigbee2mqtt'\nfriendly_name='kitchen'\nlocation={building='b'}\n",
            "t.toml",
            std::path::Path::new("."),
        )
        .unwrap();
        assert_eq!(
            Router::new(&config).device_filters(),
            [
                "legacy/kitchen/gas",
                "sensors/a/+",
                "sensors/c/heartbeat",
                // `sensors/d/+` would also match device e's topic.
                "sensors/d/gas",
                "sensors/d/heartbeat",
                "sensors/d/state",
                "sensors/e/heartbeat",
                "zigbee2mqtt/kitchen/#",
            ]
        );
    }

    #[test]
    fn subscriptions_use_wildcards_plus_custom_topics() {
        let config = edge_config::parse(
            "[site]\nid='s'\nname='s'\nkind='compound'\n[[locations.buildings]]\nid='b'\nname='b'\nfloors=2\n\
             [[devices]]\nid='a'\nkind='smoke'\nlocation={building='b'}\n\
             [[devices]]\nid='c'\nkind='gas'\ntopic='legacy/kitchen/gas'\nlocation={building='b'}\n",
            "t.toml",
            std::path::Path::new("."),
        )
        .unwrap();
        let router = Router::new(&config);
        assert_eq!(
            router.subscriptions(),
            [
                "sensors/+/state",
                "sensors/+/heartbeat",
                "zigbee2mqtt/#",
                "legacy/kitchen/gas"
            ]
        );
        assert!(router.route("sensors/a/state").is_some());
        assert!(router.route("sensors/zz/state").is_none());
        assert!(router.is_ignorable("zigbee2mqtt/bridge/state"));
        assert!(router.is_ignorable("zigbee2mqtt/valve/set"));
        assert!(!router.is_ignorable("sensors/zz/state"));
    }

    fn native(payload: &str, kind: DeviceKind) -> Result<Decoded, Reject> {
        decode(payload.as_bytes(), PayloadFormat::Native, Role::State, kind)
    }

    #[test]
    fn native_smoke_payload_with_timestamp_decodes() {
        let d = native(
            r#"{"ts":"2026-11-23T03:12:45.120+08:00","smoke":true,"temperature_c":31.5,"battery_pct":87}"#,
            DeviceKind::Smoke,
        )
        .unwrap();
        assert_eq!(d.values.smoke, Some(true));
        assert_eq!(d.values.temperature_c, Some(31.5));
        assert_eq!(d.values.battery_pct, Some(87.0));
        assert_eq!(d.sensor_ts.unwrap().timestamp_millis(), 1_795_374_765_120);
    }

    #[test]
    fn native_ebike_battery_payload_decodes() {
        let d = native(
            r#"{"battery_temp_c":48.2,"voltage_v":53.1,"current_a":4.2,"charging":true,"present":true}"#,
            DeviceKind::EbikeBattery,
        )
        .unwrap();
        assert_eq!(d.values.battery_temp_c, Some(48.2));
        assert_eq!(d.values.charging, Some(true));
    }

    #[test]
    fn zigbee2mqtt_water_leak_payload_maps_field_names() {
        let d = decode(
            br#"{"battery":100,"battery_low":false,"tamper":false,"voltage":3015,"water_leak":true,"linkquality":73}"#,
            PayloadFormat::Zigbee2mqtt,
            Role::State,
            DeviceKind::WaterLeak,
        )
        .unwrap();
        assert_eq!(d.values.water_leak, Some(true));
        assert_eq!(d.values.battery_pct, Some(100.0));
        assert_eq!(d.values.linkquality, Some(73.0));
    }

    #[test]
    fn a_zigbee2mqtt_emergency_button_action_is_an_sos_press() {
        let z = |p: &str, kind| {
            decode(p.as_bytes(), PayloadFormat::Zigbee2mqtt, Role::State, kind).unwrap()
        };
        assert_eq!(
            z(r#"{"action":"emergency"}"#, DeviceKind::Sos)
                .values
                .pressed,
            Some(true)
        );
        assert_eq!(
            z(r#"{"action":"single","battery":90}"#, DeviceKind::Sos)
                .values
                .pressed,
            Some(true)
        );
        assert_eq!(
            z(r#"{"action":"release"}"#, DeviceKind::Sos).values.pressed,
            None
        );
        assert_eq!(
            z(r#"{"action":"single"}"#, DeviceKind::Smoke)
                .values
                .pressed,
            None
        );
    }

    #[test]
    fn bad_payloads_are_rejected_with_their_reason() {
        let smoke = DeviceKind::Smoke;
        assert_eq!(native("{not json", smoke), Err(Reject::InvalidJson));
        assert_eq!(native("[1,2]", smoke), Err(Reject::NotAnObject));
        assert_eq!(native(r#"{"smoke":"yes"}"#, smoke), Err(Reject::WrongType));
        assert_eq!(
            native(r#"{"ts":"yesterday"}"#, smoke),
            Err(Reject::WrongType)
        );
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_PAYLOAD_BYTES));
        assert_eq!(native(&big, smoke), Err(Reject::Oversized));
    }

    #[test]
    fn availability_accepts_plain_and_json_forms() {
        let a = |p: &str| {
            decode(
                p.as_bytes(),
                PayloadFormat::Zigbee2mqtt,
                Role::Availability,
                DeviceKind::Gas,
            )
        };
        assert_eq!(a("online").unwrap().online, Some(true));
        assert_eq!(a("offline").unwrap().online, Some(false));
        assert_eq!(a(r#"{"state":"offline"}"#).unwrap().online, Some(false));
        assert_eq!(a("maybe"), Err(Reject::WrongType));
    }
}
