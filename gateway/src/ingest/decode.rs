//! Payload decoding: topic → device, bytes → [`Values`], both payload formats.
//!
//! Pure functions, no I/O: the ingest task calls [`Router::route`] then [`decode`] for every
//! MQTT publish, and counts whatever they reject.

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset};
use edge_config::{Config, Device, DeviceKind, Field, FieldType, PayloadFormat};
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

/// How to read one device's payloads: its kind, and what its model's profile and its own
/// `fields` say beyond the generic decoding (see `edge_config::profiles`).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub kind: DeviceKind,
    /// (reading, payload key) pairs read after the generic decoding, over it.
    pub fields: Vec<(Field, String)>,
    /// Payload keys the generic decoding must not read (a gas meter's `gas` in m³).
    pub ignore: Vec<&'static str>,
}

impl Spec {
    /// The generic decoding of a kind.
    pub fn of(kind: DeviceKind) -> Self {
        Spec {
            kind,
            fields: Vec::new(),
            ignore: Vec::new(),
        }
    }

    /// A configured device's decoding: its kind, profile and `fields`.
    pub fn for_device(d: &Device) -> Self {
        Spec {
            kind: d.kind,
            fields: d.field_map(),
            ignore: d.ignored_keys(),
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
    /// `zigbee2mqtt/{name}/{property}`: one property's bare value — Zigbee2MQTT's
    /// `output: attribute` mode, and the `{name}/action` side topic Home Assistant set-ups
    /// enable. The property is the topic's last level (see [`decode_on`]).
    Property,
}

/// Maps topics to devices, built once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Exact topic → (device index in `Config::devices`, role).
    topics: HashMap<String, (usize, Role)>,
    /// A zigbee2mqtt device's state topic `zigbee2mqtt/{name}` → its index: the prefix of
    /// its property topics.
    zigbee: HashMap<String, usize>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let mut topics = HashMap::new();
        let mut zigbee = HashMap::new();
        for (i, d) in config.devices.iter().enumerate() {
            topics.insert(d.state_topic(), (i, Role::State));
            if d.format == PayloadFormat::Zigbee2mqtt {
                zigbee.entry(d.state_topic()).or_insert(i);
            }
            let extra = match d.format {
                PayloadFormat::Native => (format!("sensors/{}/heartbeat", d.id), Role::Heartbeat),
                PayloadFormat::Zigbee2mqtt => (
                    format!("zigbee2mqtt/{}/availability", d.friendly_name()),
                    Role::Availability,
                ),
            };
            topics.entry(extra.0).or_insert((i, extra.1));
        }
        Router { topics, zigbee }
    }

    /// The device and role of a topic, if any device owns it: its exact topics first, then a
    /// zigbee2mqtt device's property topics `zigbee2mqtt/{name}/{property}` (not its
    /// commands `set`/`get`).
    pub fn route(&self, topic: &str) -> Option<(usize, Role)> {
        if let Some(hit) = self.topics.get(topic) {
            return Some(*hit);
        }
        let (state, property) = topic.rsplit_once('/')?;
        if state == "zigbee2mqtt/bridge" {
            return None;
        }
        let device = self.zigbee.get(state)?;
        let plain = !property.is_empty() && !property.contains(['+', '#']);
        (plain && !matches!(property, "set" | "get")).then_some((*device, Role::Property))
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
        // A name may have levels of its own (`floor2/kitchen`): its property topics
        // (`output: attribute`, `/action`) must still reach the device link.
        let plain = !name.is_empty() && !name.contains(['+', '#']);
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

type JsonMap = serde_json::Map<String, serde_json::Value>;

/// Zigbee2MQTT's field names, as zigbee-herdsman-converters' `exposes` define them (checked
/// against `tests/fixtures/zigbee2mqtt/corpus.json`, generated from the converters). Each
/// publish is the device's whole cached state, so most keys are none of ours and are
/// ignored; the keys read here must have the type the converters give them (`wrong_type`).
fn z2m_values(map: &JsonMap, kind: DeviceKind) -> Result<Values, Reject> {
    let (gas, gas_lel_pct) = z2m_gas(map)?;
    Ok(Values {
        smoke: flag(map, "smoke")?,
        gas,
        gas_lel_pct,
        water_leak: flag(map, "water_leak")?,
        tamper: boolean(map, "tamper")?,
        battery_low: battery_low(map)?,
        battery_pct: number(map, "battery")?,
        temperature_c: temperature(map)?,
        linkquality: number(map, "linkquality")?,
        // Valves and sirens report `state` ("ON"/"OFF", "OPEN"/"CLOSE").
        state: text(map, "state")?.map(str::to_ascii_lowercase),
        pressed: if kind == DeviceKind::Sos {
            sos_pressed(map)?
        } else {
            None
        },
        heat: if kind == DeviceKind::Heat {
            heat_alarm(map)?
        } else {
            None
        },
        ..z2m_kind_values(map, kind)?
    })
}

/// What only a CO alarm or a smart plug reports: read for those kinds alone, so another
/// device's unrelated `co` or `power` key is never taken for one.
fn z2m_kind_values(map: &JsonMap, kind: DeviceKind) -> Result<Values, Reject> {
    Ok(match kind {
        DeviceKind::CarbonMonoxide => Values {
            carbon_monoxide: co_alarm(map)?,
            co_ppm: match number(map, "co")? {
                Some(ppm) => Some(ppm),
                None => number(map, "carbon_monoxide_value")?,
            },
            ..Values::default()
        },
        DeviceKind::SmartPlug => Values {
            power_w: number(map, "power")?,
            current_a: number(map, "current")?,
            voltage_v: number(map, "voltage")?,
            energy_kwh: number(map, "energy")?,
            plug_temp_c: match number(map, "device_temperature")? {
                Some(t) => Some(t),
                None => number(map, "temperature")?,
            },
            ..Values::default()
        },
        _ => Values::default(),
    })
}

/// A CO alarm's own flag: `carbon_monoxide` (IAS zone, Tuya), or `co_state` `alarm` /
/// `normal` (Lincukoo).
fn co_alarm(map: &JsonMap) -> Result<Option<bool>, Reject> {
    let flag = flag(map, "carbon_monoxide")?;
    let state = match text(map, "co_state")? {
        Some("alarm") => Some(true),
        Some("normal") => Some(false),
        _ => None,
    };
    Ok([flag, state]
        .into_iter()
        .flatten()
        .reduce(|any, on| any || on))
}

/// Applies a device's field map (profile + `fields`) over the generic values: each mapped
/// key present in the payload sets its reading; a key of the wrong JSON type is `wrong_type`.
fn apply_fields(map: &JsonMap, spec: &Spec, values: &mut Values) -> Result<(), Reject> {
    for (f, key) in &spec.fields {
        let Some(v) = field(map, key) else {
            continue;
        };
        let wrong = || Reject::WrongType;
        match f.value_type() {
            FieldType::Flag => set_flag(values, *f, v.as_bool().ok_or_else(wrong)?),
            FieldType::Number => set_number(values, *f, v.as_f64().ok_or_else(wrong)?),
            FieldType::Text => {
                values.state = Some(v.as_str().ok_or_else(wrong)?.to_ascii_lowercase())
            }
        }
    }
    Ok(())
}

fn set_flag(v: &mut Values, f: Field, on: bool) {
    let slot = match f {
        Field::Smoke => &mut v.smoke,
        Field::Heat => &mut v.heat,
        Field::Gas => &mut v.gas,
        Field::CarbonMonoxide => &mut v.carbon_monoxide,
        Field::WaterLeak => &mut v.water_leak,
        Field::BatteryLow => &mut v.battery_low,
        Field::Tamper => &mut v.tamper,
        Field::Charging => &mut v.charging,
        Field::Present => &mut v.present,
        Field::Pressed => &mut v.pressed,
        _ => return,
    };
    *slot = Some(on);
}

fn set_number(v: &mut Values, f: Field, x: f64) {
    let slot = match f {
        Field::TemperatureC => &mut v.temperature_c,
        Field::GasLelPct => &mut v.gas_lel_pct,
        Field::CoPpm => &mut v.co_ppm,
        Field::BatteryPct => &mut v.battery_pct,
        Field::BatteryTempC => &mut v.battery_temp_c,
        Field::VoltageV => &mut v.voltage_v,
        Field::CurrentA => &mut v.current_a,
        Field::PowerW => &mut v.power_w,
        Field::EnergyKwh => &mut v.energy_kwh,
        Field::PlugTempC => &mut v.plug_temp_c,
        _ => return,
    };
    *slot = Some(x);
}

/// A key's value; JSON `null` (Zigbee2MQTT publishes it for a value it lost) is absent.
fn field<'a>(map: &'a JsonMap, key: &str) -> Option<&'a serde_json::Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn boolean(map: &JsonMap, key: &str) -> Result<Option<bool>, Reject> {
    field(map, key)
        .map(|v| v.as_bool().ok_or(Reject::WrongType))
        .transpose()
}

fn number(map: &JsonMap, key: &str) -> Result<Option<f64>, Reject> {
    field(map, key)
        .map(|v| v.as_f64().ok_or(Reject::WrongType))
        .transpose()
}

fn text<'a>(map: &'a JsonMap, key: &str) -> Result<Option<&'a str>, Reject> {
    field(map, key)
        .map(|v| v.as_str().ok_or(Reject::WrongType))
        .transpose()
}

/// Whether `suffix` names an endpoint: Zigbee2MQTT suffixes a property of a multi-endpoint
/// device with the endpoint's name or number (`smoke_l1`, `temperature_38`, `water_leak_left`).
fn is_endpoint(suffix: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(suffix)
        || suffix.strip_prefix('l').is_some_and(digits)
        || matches!(suffix, "left" | "right" | "top" | "bottom" | "center")
}

/// The values of `key`'s endpoint-suffixed variants (`key_38`, `key_l1`) in `map`.
fn per_endpoint<'a>(
    map: &'a JsonMap,
    key: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    map.iter()
        .filter(move |(k, v)| {
            !v.is_null()
                && k.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .is_some_and(is_endpoint)
        })
        .map(|(_, v)| v)
}

/// An alarm flag, on the device or on any of its endpoints: set if any is set.
fn flag(map: &JsonMap, key: &str) -> Result<Option<bool>, Reject> {
    let mut out = boolean(map, key)?;
    for v in per_endpoint(map, key) {
        let on = v.as_bool().ok_or(Reject::WrongType)?;
        out = Some(out.unwrap_or(false) || on);
    }
    Ok(out)
}

/// A heat detector's own alarm flag: `heat` (Frient/Develco-style), `smoke` (heat alarms
/// built on the IAS fire zone, e.g. Develco HESZB-120) or a boolean `alarm` (Heiman
/// HM-5HA-E); set when any is. `alarm` is another kind of value on other devices, so only a
/// boolean one is read.
fn heat_alarm(map: &JsonMap) -> Result<Option<bool>, Reject> {
    let alarm = field(map, "alarm").and_then(serde_json::Value::as_bool);
    let flags = [flag(map, "heat")?, flag(map, "smoke")?, alarm];
    Ok(flags.into_iter().flatten().reduce(|any, on| any || on))
}

/// `temperature`, else the hottest endpoint's (`temperature_38` on Frient's fire detector).
fn temperature(map: &JsonMap) -> Result<Option<f64>, Reject> {
    if let Some(t) = number(map, "temperature")? {
        return Ok(Some(t));
    }
    let mut hottest: Option<f64> = None;
    for v in per_endpoint(map, "temperature") {
        let t = v.as_f64().ok_or(Reject::WrongType)?;
        hottest = Some(hottest.map_or(t, |h| h.max(t)));
    }
    Ok(hottest)
}

/// `battery_low`, else the Tuya-style `battery_state` (`low` / `medium` / `high`).
fn battery_low(map: &JsonMap) -> Result<Option<bool>, Reject> {
    if let Some(low) = boolean(map, "battery_low")? {
        return Ok(Some(low));
    }
    Ok(text(map, "battery_state")?.map(|s| s.eq_ignore_ascii_case("low")))
}

/// The gas alarm flag and concentration (% LEL). `gas` is a boolean alarm on most detectors
/// and a concentration in % LEL on some (Lincukoo E04CF-Z10T), whose alarm is then
/// `gas_sensor_state: "alarm"`; Xiaomi/Aqara report `gas_density` in % LEL. `gas_value` is
/// not read: its unit differs by model (LEL on some Tuya detectors, ppm on others), and those
/// models publish the `gas` flag too.
fn z2m_gas(map: &JsonMap) -> Result<(Option<bool>, Option<f64>), Reject> {
    let (mut alarm, mut lel) = match field(map, "gas") {
        None => (None, None),
        Some(serde_json::Value::Bool(b)) => (Some(*b), None),
        Some(v) => (None, Some(v.as_f64().ok_or(Reject::WrongType)?)),
    };
    match text(map, "gas_sensor_state")? {
        Some("alarm") => alarm = Some(true),
        Some("normal") => alarm = alarm.or(Some(false)),
        _ => {}
    }
    if lel.is_none() {
        lel = number(map, "gas_density")?;
    }
    Ok((alarm, lel))
}

/// A zigbee2mqtt SOS/emergency button: any `action` press counts (`emergency`, `sos`,
/// `single`, `double`, `hold`…) but a release, an empty action or `off` (an IAS button's
/// zone back to idle); so does an IAS panic button's boolean `sos`, `sos_alarm`,
/// `emergency` or `panic` when set.
fn sos_pressed(map: &JsonMap) -> Result<Option<bool>, Reject> {
    let action = text(map, "action")?.map(str::trim).unwrap_or("");
    let press = !action.is_empty() && action != "off" && !action.contains("release");
    let mut flagged = false;
    for key in ["sos", "sos_alarm", "emergency", "panic"] {
        flagged |= boolean(map, key)? == Some(true);
    }
    Ok((press || flagged).then_some(true))
}

/// Decodes one payload for a device of `kind` in `format`, arriving on a topic of `role`
/// (a [`Role::Property`] topic has no property here: see [`decode_on`]).
pub fn decode(
    payload: &[u8],
    format: PayloadFormat,
    role: Role,
    kind: DeviceKind,
) -> Result<Decoded, Reject> {
    decode_on("", payload, format, role, &Spec::of(kind))
}

/// Decodes one payload that arrived on `topic`, for a device read as `spec` in `format`, the
/// topic having `role` for the device.
pub fn decode_on(
    topic: &str,
    payload: &[u8],
    format: PayloadFormat,
    role: Role,
    spec: &Spec,
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
        Role::State => decode_state(payload, format, spec),
        Role::Property => {
            let property = topic.rsplit('/').next().unwrap_or_default();
            decode_property(property, payload, spec)
        }
    }
}

fn decode_state(payload: &[u8], format: PayloadFormat, spec: &Spec) -> Result<Decoded, Reject> {
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| Reject::InvalidJson)?;
    let serde_json::Value::Object(map) = json else {
        return Err(Reject::NotAnObject);
    };
    let (mut values, sensor_ts) = match format {
        PayloadFormat::Native => {
            let n: Native = serde_json::from_value(serde_json::Value::Object(map.clone()))
                .map_err(|_| Reject::WrongType)?;
            (n.values, n.ts)
        }
        PayloadFormat::Zigbee2mqtt => (z2m_generic(&map, spec)?, None),
    };
    apply_fields(&map, spec, &mut values)?;
    finite(values, sensor_ts)
}

/// The generic Zigbee2MQTT reading, without the keys the device's profile says not to read.
fn z2m_generic(map: &JsonMap, spec: &Spec) -> Result<Values, Reject> {
    if spec.ignore.is_empty() {
        return z2m_values(map, spec.kind);
    }
    let mut kept = map.clone();
    kept.retain(|k, _| !spec.ignore.contains(&k.as_str()));
    z2m_values(&kept, spec.kind)
}

/// One property's bare value (`output: attribute`, the `/action` side topic): JSON for
/// numbers, booleans and objects, the plain text for strings (`single`, `ON`).
fn decode_property(property: &str, payload: &[u8], spec: &Spec) -> Result<Decoded, Reject> {
    let value = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => v,
        Err(_) => {
            let text = std::str::from_utf8(payload).map_err(|_| Reject::InvalidJson)?;
            serde_json::Value::String(text.to_owned())
        }
    };
    let mut map = JsonMap::new();
    map.insert(property.to_owned(), value);
    let mut values = z2m_generic(&map, spec)?;
    apply_fields(&map, spec, &mut values)?;
    finite(values, None)
}

fn finite(values: Values, sensor_ts: Option<DateTime<FixedOffset>>) -> Result<Decoded, Reject> {
    if !values_are_finite(&values) {
        return Err(Reject::WrongType);
    }
    Ok(Decoded {
        values,
        sensor_ts,
        online: Some(true),
    })
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
        v.co_ppm,
        v.power_w,
        v.energy_kwh,
        v.plug_temp_c,
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

    /// A message of the Zigbee2MQTT corpus generated from zigbee-herdsman-converters'
    /// device definitions (`tests/fixtures/zigbee2mqtt/corpus.json`, see
    /// `simulators/z2m-corpus`), as the bytes Zigbee2MQTT puts on the wire.
    fn corpus(id: &str, state: &str, topic_suffix: &str) -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/zigbee2mqtt/corpus.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let corpus: serde_json::Value = serde_json::from_str(&text).unwrap();
        let device = corpus["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in the corpus"));
        let message = device["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["state"] == state && m["topic_suffix"] == topic_suffix)
            .unwrap_or_else(|| panic!("no {state} message on {topic_suffix:?} for {id}"));
        match &message["payload"] {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        }
    }

    fn z2m(payload: &[u8], kind: DeviceKind) -> Values {
        decode(payload, PayloadFormat::Zigbee2mqtt, Role::State, kind)
            .unwrap()
            .values
    }

    #[test]
    fn zigbee2mqtt_side_and_attribute_topics_belong_to_their_device() {
        let config = edge_config::parse(
            "[site]\nid='s'\nname='s'\nkind='compound'\n[[locations.buildings]]\nid='b'\nname='b'\nfloors=2\n\
             [[devices]]\nid='sos'\nkind='sos'\nformat='zigbee2mqtt'\nfriendly_name='ts0215a-sos'\nlocation={building='b'}\n\
             [[devices]]\nid='leak'\nkind='water_leak'\nformat='zigbee2mqtt'\nfriendly_name='floor2/bath'\nlocation={building='b'}\n",
            "t.toml",
            std::path::Path::new("."),
        )
        .unwrap();
        let router = Router::new(&config);
        let on = |topic: &str, payload: &[u8]| {
            let (device, role) = router.route(topic).unwrap();
            let kind = config.devices[device].kind;
            (
                device,
                decode_on(
                    topic,
                    payload,
                    PayloadFormat::Zigbee2mqtt,
                    role,
                    &Spec::of(kind),
                )
                .unwrap(),
            )
        };
        // Home Assistant's side topic: the bare action string, a press.
        let (device, d) = on(
            "zigbee2mqtt/ts0215a-sos/action",
            &corpus("ts0215a-sos", "alarm", "/action"),
        );
        assert_eq!((device, d.values.pressed), (0, Some(true)));
        // `output: attribute`: one property per topic, bare values.
        let leak = corpus("sjcgq11lm-attr", "alarm", "/water_leak");
        assert_eq!(
            on("zigbee2mqtt/floor2/bath/water_leak", &leak)
                .1
                .values
                .water_leak,
            Some(true)
        );
        let seen = corpus("sjcgq11lm-attr", "alarm", "/last_seen");
        assert_eq!(
            on("zigbee2mqtt/floor2/bath/last_seen", &seen).1.values,
            Values::default()
        );
        // A property's value still needs the type the converters give it.
        let wet = decode_on(
            "zigbee2mqtt/floor2/bath/water_leak",
            b"wet",
            PayloadFormat::Zigbee2mqtt,
            Role::Property,
            &Spec::of(DeviceKind::WaterLeak),
        );
        assert_eq!(wet, Err(Reject::WrongType));
        // Commands, availability and the bridge keep their meaning.
        assert_eq!(router.route("zigbee2mqtt/floor2/bath/set"), None);
        assert!(router.is_ignorable("zigbee2mqtt/floor2/bath/set"));
        assert_eq!(
            router.route("zigbee2mqtt/ts0215a-sos/availability"),
            Some((0, Role::Availability))
        );
        assert_eq!(router.route("zigbee2mqtt/bridge/state"), None);
        // A name with levels still gets one broker filter covering its property topics.
        assert!(router
            .device_filters()
            .contains(&"zigbee2mqtt/floor2/bath/#".to_owned()));
    }

    #[test]
    fn an_ias_emergency_buttons_off_action_is_the_zone_back_to_idle_not_a_press() {
        for id in ["hs1eb-hs1eb-e", "se21"] {
            let off = z2m(&corpus(id, "clear", ""), DeviceKind::Sos);
            assert_eq!(off.pressed, None, "{id}: action off");
            let press = z2m(&corpus(id, "alarm", ""), DeviceKind::Sos);
            assert_eq!(press.pressed, Some(true), "{id}: action single");
        }
    }

    #[test]
    fn a_panic_buttons_boolean_sos_is_a_press() {
        for id in ["seb01zb", "pb206"] {
            assert_eq!(
                z2m(&corpus(id, "alarm", ""), DeviceKind::Sos).pressed,
                Some(true),
                "{id}"
            );
            assert_eq!(
                z2m(&corpus(id, "clear", ""), DeviceKind::Sos).pressed,
                None,
                "{id}"
            );
        }
    }

    #[test]
    fn a_gas_concentration_in_gas_with_its_alarm_in_gas_sensor_state_is_decoded() {
        let alarm = z2m(&corpus("e04cf-z10t", "alarm", ""), DeviceKind::Gas);
        assert_eq!((alarm.gas, alarm.gas_lel_pct), (Some(true), Some(20.0)));
        let clear = z2m(&corpus("e04cf-z10t", "clear", ""), DeviceKind::Gas);
        assert_eq!((clear.gas, clear.gas_lel_pct), (Some(false), Some(0.0)));
        // The usual boolean `gas` with a `gas_value` of model-specific unit: the flag only.
        let tuya = z2m(&corpus("ts0601-gas-sensor-2", "alarm", ""), DeviceKind::Gas);
        assert_eq!((tuya.gas, tuya.gas_lel_pct), (Some(true), None));
    }

    #[test]
    fn a_heat_detectors_own_alarm_is_read_from_heat_smoke_or_a_boolean_alarm() {
        // W599001 publishes `heat`, HESZB-120 `smoke`, HM-5HA-E a boolean `alarm`.
        for id in ["w599001", "heszb-120", "hm-5ha-e"] {
            let alarm = z2m(&corpus(id, "alarm", ""), DeviceKind::Heat);
            assert_eq!(alarm.heat, Some(true), "{id}");
            let normal = z2m(&corpus(id, "normal", ""), DeviceKind::Heat);
            assert_eq!(normal.heat, Some(false), "{id}");
        }
        // Other kinds do not read it.
        let smoke = z2m(&corpus("w599001", "alarm", ""), DeviceKind::Smoke);
        assert_eq!(smoke.heat, None);
    }

    #[test]
    fn an_endpoint_suffixed_temperature_is_the_heat_detectors_temperature() {
        let alarm = z2m(&corpus("heszb-120", "alarm", ""), DeviceKind::Heat);
        assert_eq!(alarm.temperature_c, Some(68.0));
        let normal = z2m(&corpus("heszb-120", "normal", ""), DeviceKind::Heat);
        assert_eq!(normal.temperature_c, Some(24.0));
        // Suffixes that are not endpoints are other properties.
        let offset = z2m(
            br#"{"temperature_offset":-15,"smoke_density":3}"#,
            DeviceKind::Heat,
        );
        assert_eq!((offset.temperature_c, offset.smoke), (None, None));
    }

    #[test]
    fn a_tuya_battery_state_maps_to_battery_low() {
        let v = z2m(&corpus("zss-hm-ssd01", "normal", ""), DeviceKind::Smoke);
        assert_eq!(v.battery_low, Some(false));
        let low = z2m(
            br#"{"battery_state":"low","smoke":false}"#,
            DeviceKind::Smoke,
        );
        assert_eq!(low.battery_low, Some(true));
    }

    #[test]
    fn co_alarms_from_the_corpus_give_their_flag_and_concentration() {
        let co = DeviceKind::CarbonMonoxide;
        for id in ["hs1ca-e", "zc-hm", "zbco-ae-10x-eur", "e12"] {
            let alarm = z2m(&corpus(id, "alarm", ""), co);
            assert_eq!(alarm.carbon_monoxide, Some(true), "{id}");
            let clear = z2m(&corpus(id, "clear", ""), co);
            assert_eq!(clear.carbon_monoxide, Some(false), "{id}");
        }
        // The concentration from `co` (Moes) or `carbon_monoxide_value` (Nous).
        assert_eq!(z2m(&corpus("zc-hm", "alarm", ""), co).co_ppm, Some(50.0));
        assert_eq!(z2m(&corpus("e12", "alarm", ""), co).co_ppm, Some(50.0));
        // A gas detector's `co` is none of its readings.
        let gas = z2m(&corpus("e04cf-z10t", "alarm", ""), DeviceKind::Gas);
        assert_eq!((gas.co_ppm, gas.carbon_monoxide), (None, None));
    }

    #[test]
    fn smart_plugs_from_the_corpus_give_load_current_and_their_own_temperature() {
        let plug = DeviceKind::SmartPlug;
        let v = z2m(&corpus("sp-euc01", "alarm", ""), plug);
        assert_eq!((v.current_a, v.power_w), (Some(12.6), Some(2900.0)));
        assert_eq!(v.plug_temp_c, Some(33.0));
        assert_eq!(v.state.as_deref(), Some("on"));
        assert!(v.energy_kwh.is_some() && v.voltage_v == Some(226.0));
        // Tuya plugs without a temperature sensor.
        let t = z2m(&corpus("ts011f-plug-1", "clear", ""), plug);
        assert_eq!((t.power_w, t.plug_temp_c), (Some(0.0), None));
        // A smoke detector's battery `voltage` (mV) is not a plug's.
        let smoke = z2m(&corpus("jtyj-gd-01lm-bw", "normal", ""), DeviceKind::Smoke);
        assert_eq!((smoke.voltage_v, smoke.power_w), (None, None));
    }

    fn spec(kind: &str, extra: &str) -> Spec {
        let config = edge_config::parse(
            &format!(
                "[site]\nid='s'\nname='s'\nkind='compound'\n[[locations.buildings]]\nid='b'\nname='b'\nfloors=2\n\
                 [[devices]]\nid='d'\nkind='{kind}'\nformat='zigbee2mqtt'\nlocation={{building='b'}}\n{extra}\n"
            ),
            "t.toml",
            std::path::Path::new("."),
        )
        .unwrap();
        Spec::for_device(&config.devices[0])
    }

    fn z2m_as(payload: &[u8], spec: &Spec) -> Result<Values, Reject> {
        decode_on("", payload, PayloadFormat::Zigbee2mqtt, Role::State, spec).map(|d| d.values)
    }

    #[test]
    fn a_models_profile_reads_gas_value_as_lel_where_the_converters_say_lel() {
        let payload = corpus("ts0601-gas-sensor-2", "alarm", "");
        let generic = z2m_as(&payload, &spec("gas", "")).unwrap();
        assert_eq!(generic.gas_lel_pct, None);
        let profiled = z2m_as(&payload, &spec("gas", "model='TS0601_gas_sensor_2'")).unwrap();
        assert_eq!(profiled.gas_lel_pct, Some(50.0));
        // ZG-225Z's gas_value is ppm: its profile keeps it out even under `output: attribute`.
        let zg = spec("gas", "model='ZG-225Z'");
        let attr = decode_on(
            "zigbee2mqtt/d/gas_value",
            b"50",
            PayloadFormat::Zigbee2mqtt,
            Role::Property,
            &zg,
        )
        .unwrap();
        assert_eq!(attr.values.gas_lel_pct, None);
    }

    #[test]
    fn an_installers_fields_map_reads_an_unknown_models_keys() {
        let s = spec(
            "gas",
            "fields = { gas_lel_pct = 'lel', gas = 'alarm_state_bool', battery_pct = 'bat' }",
        );
        let v = z2m_as(br#"{"lel": 12.5, "alarm_state_bool": true, "bat": 80}"#, &s).unwrap();
        assert_eq!(
            (v.gas_lel_pct, v.gas, v.battery_pct),
            (Some(12.5), Some(true), Some(80.0))
        );
        // The mapped key must have the reading's type.
        assert_eq!(z2m_as(br#"{"lel": "high"}"#, &s), Err(Reject::WrongType));
        // A device's own map wins over its profile.
        let own = spec(
            "gas",
            "model='TS0601_gas_sensor_2'\nfields = { gas_lel_pct = 'gas_density' }",
        );
        let v = z2m_as(br#"{"gas_value": 40, "gas_density": 3}"#, &own).unwrap();
        assert_eq!(v.gas_lel_pct, Some(3.0));
    }

    /// Units of the properties whose meaning differs by model, over every definition of
    /// zigbee-herdsman-converters (the corpus's `units`, generated from the package).
    #[test]
    fn every_model_whose_converters_give_a_gas_concentration_in_lel_is_read_as_lel_and_no_other() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/zigbee2mqtt/corpus.json"
        );
        let corpus: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let units = corpus["units"].as_array().expect("units in the corpus");
        let mut checked = 0;
        for u in units {
            let (model, property, unit) = (
                u["model"].as_str().unwrap(),
                u["property"].as_str().unwrap(),
                u["unit"].as_str().unwrap(),
            );
            let kind = if matches!(property, "co" | "carbon_monoxide_value") {
                "carbon_monoxide"
            } else if property == "smoke_concentration" {
                "smoke"
            } else {
                "gas"
            };
            let s = spec(kind, &format!("model = '{model}'"));
            let v = z2m_as(format!("{{\"{property}\": 42}}").as_bytes(), &s).unwrap();
            // Xiaomi's `gas_density` has no unit in its exposes; Xiaomi documents % LEL.
            let lel = unit.contains("LEL") || (property == "gas_density" && unit.is_empty());
            assert_eq!(
                v.gas_lel_pct.is_some(),
                lel,
                "{model}: {property} in {unit:?} read as % LEL: {:?}",
                v.gas_lel_pct
            );
            if kind == "carbon_monoxide" {
                assert_eq!(
                    v.co_ppm,
                    (unit == "ppm").then_some(42.0),
                    "{model}: {property}"
                );
            }
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} units checked");
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
